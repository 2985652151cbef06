"""Statistics per metric (last, mean, std, min, max, count), as the seed's `get_statistics`."""

from __future__ import annotations

from textual.widgets import DataTable

from dswb.tui.format import fmt_num
from dswb.tui.widgets._tables import fill_table

FULL_COLUMNS = ("metric", "last", "mean", "std", "min", "max", "count")
COMPACT_COLUMNS = ("metric", "last", "mean", "min", "max")
# The metrics worth a line in the compact (side panel) table, in this order.
HEADLINE = ("loss", "lr", "grad_norm", "tokens_per_s", "pad_efficiency", "step_time_s",
            "reward", "kl", "entropy", "clip_frac")


class StatsTable(DataTable):
    """A read-only table of streaming statistics; `show(summaries)` replaces its rows."""

    DEFAULT_CSS = """
    StatsTable { height: auto; max-height: 100%; }
    """

    def __init__(self, *, compact: bool = False, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.compact = compact
        self._shown: object = None

    @property
    def column_names(self) -> tuple[str, ...]:
        return COMPACT_COLUMNS if self.compact else FULL_COLUMNS

    def on_mount(self) -> None:
        fill_table(self, [(c, c) for c in self.column_names], [])

    def show(self, summaries: dict[str, dict[str, float]]) -> None:
        if self.compact:
            summaries = {k: summaries[k] for k in HEADLINE if k in summaries}
        rows = [self._row(name, s) for name, s in summaries.items()]
        if rows == self._shown:
            return
        self._shown = rows
        fill_table(self, [(c, c) for c in self.column_names], rows, [row[0] for row in rows])

    def _row(self, name: str, s: dict[str, float]) -> tuple[str, ...]:
        cells = {"metric": name, "last": fmt_num(s.get("last")), "mean": fmt_num(s.get("mean")),
                 "std": fmt_num(s.get("std")), "min": fmt_num(s.get("min")),
                 "max": fmt_num(s.get("max")), "count": fmt_num(int(s.get("count", 0)))}
        return tuple(cells[c] for c in (COMPACT_COLUMNS if self.compact else FULL_COLUMNS))
