"""CPU, RAM, free disk (when reported) and GPU figures from the run's latest `system` event."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from dswb.tui.format import bar, finite_or_none, fmt_num, fmt_pct

BAR = 12


class SystemPanel(Static):
    """Shows one system sample; values the run did not report read N/A."""

    DEFAULT_CSS = """
    SystemPanel { height: auto; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("no system samples yet", id=id, classes=classes)
        self._shown: dict | None = None

    def show(self, sample: dict) -> None:
        if sample == self._shown:
            return
        rows = _row_keys(self._shown)
        self._shown = dict(sample) if isinstance(sample, dict) else None
        self.update(render_system(sample), layout=_row_keys(self._shown) != rows)  # same rows: same height


def _row_keys(sample: dict | None) -> tuple:
    """What decides the panel's height: which optional rows it has."""
    if not sample:
        return ()
    return ("disk_free_gb" in sample, "gpu_util_pct" in sample or "gpu_mem_used_mb" in sample)


def _pct_row(label: str, pct: object, extra: str) -> list:
    frac = (finite_or_none(pct) or 0.0) / 100
    return [Text(label, style="bold"), fmt_pct(pct), Text(bar(frac, BAR), style="green"), extra]


def render_system(sample: object) -> Table | str:
    if not isinstance(sample, dict) or not sample:
        return "no system samples yet"
    grid = Table.grid(padding=(0, 1))
    for _ in range(4):
        grid.add_column()
    cpu = finite_or_none(sample.get("cpu_pct"))
    grid.add_row(Text("CPU", style="bold"), fmt_pct(cpu),
                 Text(bar(min(1.0, cpu / 100), BAR), style="green") if cpu is not None else "",
                 f"RSS {fmt_num(sample.get('rss_mb'))} MB")
    grid.add_row(*_pct_row("RAM", sample.get("ram_used_pct"), f"{fmt_num(sample.get('ram_used_mb'))} MB used"))
    if "disk_free_gb" in sample:  # the run's disk: what the next checkpoints can use
        grid.add_row(Text("Disk", style="bold"), f"{fmt_num(sample.get('disk_free_gb'))} GB", "", "free")
    if "gpu_util_pct" in sample or "gpu_mem_used_mb" in sample:
        grid.add_row(*_pct_row("GPU", sample.get("gpu_util_pct"), f"temp {fmt_num(sample.get('gpu_temp_c'))}°C"))
        used, total = finite_or_none(sample.get("gpu_mem_used_mb")), finite_or_none(sample.get("gpu_mem_total_mb"))
        pct = 100 * used / total if used is not None and total else None
        grid.add_row(*_pct_row("VRAM", pct, f"{fmt_num(used)} / {fmt_num(total)} MB, peak {fmt_num(sample.get('cuda_peak_mb'))} MB"))
    else:
        grid.add_row(Text("GPU", style="bold"), "N/A", "", "no GPU in this run")
    return grid
