"""FP8 statistics per layer group: amax, saturation and underflow (from `fp8` events)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from dswb.tui.widgets._tables import fill_table

COLUMNS = [(c, c) for c in ("layer group", "amax", "saturation %", "underflow %")]
SATURATION_WARN = 0.1  # percent of values clipped at the FP8 maximum worth a highlight
UNDERFLOW_WARN = 5.0  # percent flushed to zero


class Fp8Panel(DataTable):
    """`show(layers, step)`: one row per layer group, worrying values highlighted."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._shown: object = None

    def on_mount(self) -> None:
        fill_table(self, COLUMNS, [])

    def show(self, layers: dict[str, dict], step: int | None) -> None:
        key = (repr(layers), step)
        if key == self._shown:
            return
        self._shown = key
        self.border_title = f"FP8 at step {step}" if step is not None else "FP8"
        rows = []
        for group, values in layers.items():
            values = values if isinstance(values, dict) else {}
            rows.append((group, _num(values.get("amax")), _flag(values.get("saturation_pct"), SATURATION_WARN),
                         _flag(values.get("underflow_pct"), UNDERFLOW_WARN)))
        fill_table(self, COLUMNS, rows, list(layers))


def _num(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "N/A"


def _flag(value: object, warn: float) -> Text:
    if not isinstance(value, (int, float)):
        return Text("N/A")
    style = "bold red" if value >= warn else ""
    return Text(f"{value:.3f}", style=style)
