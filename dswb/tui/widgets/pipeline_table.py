"""The pipeline table: one row per stage with its state, steps and accuracies, or the held-out
number of a stage on files (`dswb.rundir.pipeline`, shared with the CLI; the columns no stage fills
are left out, `shown_columns`)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from dswb.rundir.pipeline import COLUMNS, PipelineRow, pick, shown_columns
from dswb.tui.format import state_badge
from dswb.tui.widgets._tables import fill_table
from dswb.util.fmt import cut_text


class PipelineTable(DataTable):
    """`show(rows)` with `PipelineRow`s, in the run's stage order."""

    DEFAULT_CSS = """
    PipelineTable { height: auto; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._shown: object = None

    def on_mount(self) -> None:
        fill_table(self, [(c, c) for c in pick(COLUMNS, shown_columns([]))], [])

    def show(self, rows: list[PipelineRow]) -> None:
        columns = shown_columns(rows)
        cells = [pick(pipeline_cells(row), columns) for row in rows]
        key = (tuple(columns), [tuple(str(c) for c in cell) for cell in cells])
        if key == self._shown:
            return
        self._shown = key
        fill_table(self, [(c, c) for c in pick(COLUMNS, columns)], cells, [str(i) for i in range(len(cells))])


def pipeline_cells(row: PipelineRow) -> tuple:
    """One cell per `COLUMNS` (the state as a badge)."""
    stage, state, steps, *values = row.cells()
    badge, style = state_badge(state) if state != "pending" else ("· pending", "dim")
    return (cut_text(stage, 100, one_line=True), Text(badge, style=style), steps, *values)
