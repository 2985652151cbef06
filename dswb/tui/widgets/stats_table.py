"""Statistics per metric (last, mean, std, min, max, count), as the blog's sketch's `get_statistics`.

Its values change at every step, so it is a `TextTable` (only changed rows are repainted).
"""

from __future__ import annotations

from dswb.util.fmt import cut_text, fmt_num
from dswb.tui.widgets.text_table import TextTable

FULL_COLUMNS = ("metric", "last", "mean", "std", "min", "max", "count")
COMPACT_COLUMNS = ("metric", "last", "mean", "min", "max")
# The metrics worth a line in the compact (side panel) table, in this order.
HEADLINE = ("loss", "lr", "grad_norm", "tokens_per_s", "pad_efficiency", "step_time_s",
            "reward", "kl", "entropy", "clip_ratio", "clip_frac")


class StatsTable(TextTable):
    """A read-only table of streaming statistics; `show(summaries)` replaces its rows."""

    def __init__(self, *, compact: bool = False, id: str | None = None, classes: str | None = None) -> None:
        names = COMPACT_COLUMNS if compact else FULL_COLUMNS
        super().__init__([(c, c) for c in names], right=names[1:], id=id, classes=classes)
        self.compact = compact

    @property
    def column_names(self) -> tuple[str, ...]:
        return COMPACT_COLUMNS if self.compact else FULL_COLUMNS

    def show(self, summaries: dict[str, dict[str, float]]) -> None:
        if self.compact:
            summaries = {k: summaries[k] for k in HEADLINE if k in summaries}
        names = [name for name, s in summaries.items() if isinstance(s, dict)]
        super().show([self._row(name, summaries[name]) for name in names], [str(name) for name in names])

    def _row(self, name: str, s: dict[str, float]) -> tuple[str, ...]:
        count = s.get("count", 0)
        cells = {"metric": cut_text(name, 100, one_line=True), "last": fmt_num(s.get("last")),
                 "mean": fmt_num(s.get("mean")), "std": fmt_num(s.get("std")), "min": fmt_num(s.get("min")),
                 "max": fmt_num(s.get("max")), "count": fmt_num(count if count.__class__ is int else None)}
        return tuple(cells[c] for c in self.column_names)
