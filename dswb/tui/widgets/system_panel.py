"""CPU, RAM, free disk (when reported) and GPU figures from the run's latest `system` event; for a
distributed run, also one line per rank (host, device or GPU, and that rank's latest figures)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from dswb.tui.format import bar, fmt_pct
from dswb.util.fmt import finite_or_none, fmt_num

BAR = 12


class SystemPanel(Static):
    """Shows one system sample; values the run did not report read N/A."""

    DEFAULT_CSS = """
    SystemPanel { height: auto; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("no system samples yet", id=id, classes=classes)
        self._shown: dict | None = None
        self._ranks: list[dict] = []

    def show(self, sample: dict, ranks: list[dict] | None = None) -> None:
        ranks = list(ranks or [])
        if sample == self._shown and ranks == self._ranks:
            return
        rows = _row_keys(self._shown, self._ranks)
        self._shown = dict(sample) if isinstance(sample, dict) else None
        self._ranks = ranks
        layout = _row_keys(self._shown, ranks) != rows  # same rows: same height
        self.update(render_system(sample, ranks), layout=layout)


def _row_keys(sample: dict | None, ranks: list[dict]) -> tuple:
    """What decides the panel's height: which optional rows it has."""
    if not sample:
        return (len(ranks),)
    return ("disk_free_gb" in sample, "gpu_util_pct" in sample or "gpu_mem_used_mb" in sample, len(ranks))


def _pct_row(label: str, pct: object, extra: str) -> list:
    frac = (finite_or_none(pct) or 0.0) / 100
    return [Text(label, style="bold"), fmt_pct(pct), Text(bar(frac, BAR), style="green"), extra]


def render_ranks(ranks: list[dict]) -> Table:
    """One row per rank: where it runs and its latest CPU, RSS and (with a GPU) utilisation and memory."""
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    for name in ("rank", "host", "device", "CPU", "RSS MB", "GPU", "VRAM MB"):
        table.add_column(name, justify="left" if name in ("host", "device") else "right")
    for entry in ranks:
        device = entry.get("gpu_name") or entry.get("device") or "-"
        if entry.get("gpu_name") and entry.get("device"):
            device = f"{entry['device']} {entry['gpu_name']}"
        gpu = fmt_pct(entry["gpu_util_pct"]) if "gpu_util_pct" in entry else "-"
        vram = fmt_num(entry["gpu_mem_used_mb"]) if "gpu_mem_used_mb" in entry else "-"
        table.add_row(str(entry.get("rank", "?")), str(entry.get("host") or "-"), str(device),
                      fmt_pct(entry.get("cpu_pct")), fmt_num(entry.get("rss_mb")), gpu, vram)
    return table


def render_system(sample: object, ranks: list[dict] | None = None) -> Table | Group | str:
    if ranks and len(ranks) > 1:
        local = render_system(sample)
        head = Text(f"{len(ranks)} ranks", style="bold")
        return Group(local, head, render_ranks(ranks)) if not isinstance(local, str) else Group(head, render_ranks(ranks))
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
