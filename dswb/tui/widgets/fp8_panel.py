"""FP8 statistics per layer group: amax, saturation and underflow (from `fp8` events)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from dswb.util.fmt import cut_text, finite_or_none
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
        layers = layers if isinstance(layers, dict) else {}
        if layers:
            self.query_one("#fp8-caption", Static).update(
                f"FP8 per layer group at step {cut_text(step, 20, one_line=True)} (latest of {samples} samples); "
                f"red: saturation >= {SATURATION_WARN}% or underflow >= {UNDERFLOW_WARN}%")
        rows = fp8_rows(layers)
        fill_table(self.table, COLUMNS, rows, [f"{i}" for i in range(len(rows))])


def fp8_rows(layers: dict) -> list[tuple]:
    """One row per layer group: name, amax, saturation % and underflow % (flagged when high)."""
    rows = []
    for group, values in list(layers.items())[:64]:
        values = values if isinstance(values, dict) else {}
        rows.append((cut_text(group, 100, one_line=True), _num(values.get("amax")),
                     _flag(values.get("saturation_pct"), SATURATION_WARN),
                     _flag(values.get("underflow_pct"), UNDERFLOW_WARN)))
    return rows


def _num(value: object) -> str:
    value = finite_or_none(value)
    return f"{value:.4g}" if value is not None else "N/A"


def _flag(value: object, warn: float) -> Text:
    value = finite_or_none(value)
    if value is None:
        return Text("N/A")
    style = "bold red" if value >= warn else ""
    return Text(f"{value:.3f}", style=style)
