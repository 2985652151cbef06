"""FP8 statistics per layer group: amax, saturation and underflow (from `fp8` events)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from dswb.tui.widgets._tables import fill_table

COLUMNS = [(c, c) for c in ("layer group", "amax", "saturation %", "underflow %")]
SATURATION_WARN = 0.1  # percent of values clipped at the FP8 maximum worth a highlight
UNDERFLOW_WARN = 5.0  # percent flushed to zero


class Fp8Panel(Vertical):
    """`show(layers, step, samples)`: a caption and one row per layer group, worrying values red."""

    DEFAULT_CSS = """
    Fp8Panel { height: 1fr; }
    Fp8Panel > Static { height: auto; padding: 0 1; }
    Fp8Panel > DataTable { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._shown: object = None

    def compose(self) -> ComposeResult:
        yield Static("no FP8 statistics in this run", id="fp8-caption")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="fp8-table")

    @property
    def table(self) -> DataTable:
        return self.query_one("#fp8-table", DataTable)

    def on_mount(self) -> None:
        fill_table(self.table, COLUMNS, [])

    def show(self, layers: dict[str, dict], step: int | None, samples: int = 0) -> None:
        key = (repr(layers), step, samples)
        if key == self._shown:
            return
        self._shown = key
        if layers:
            self.query_one("#fp8-caption", Static).update(
                f"FP8 per layer group at step {step} (latest of {samples} samples); red: saturation >= "
                f"{SATURATION_WARN}% or underflow >= {UNDERFLOW_WARN}%")
        rows = []
        for group, values in layers.items():
            values = values if isinstance(values, dict) else {}
            rows.append((group, _num(values.get("amax")), _flag(values.get("saturation_pct"), SATURATION_WARN),
                         _flag(values.get("underflow_pct"), UNDERFLOW_WARN)))
        fill_table(self.table, COLUMNS, rows, list(layers))


def _num(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "N/A"


def _flag(value: object, warn: float) -> Text:
    if not isinstance(value, (int, float)):
        return Text("N/A")
    style = "bold red" if value >= warn else ""
    return Text(f"{value:.3f}", style=style)
