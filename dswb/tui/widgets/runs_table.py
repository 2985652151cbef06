"""The runs under the runs root: state, stage, step, last loss, last write; marks for compare."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from dswb.tui.follower import RunRow
from dswb.tui.widgets._tables import fill_table
from dswb.tui.format import state_badge
from dswb.util.fmt import fmt_age, fmt_num

COLUMNS = ("", "run", "state", "stage", "step", "loss", "updated")


class RunsTable(DataTable):
    """One row per run (key: run id). Space marks up to two runs to compare."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.rows_by_id: dict[str, RunRow] = {}
        self.marked: list[str] = []
        self._shown: object = None

    def on_mount(self) -> None:
        fill_table(self, [(name or "mark", name) for name in COLUMNS], [])

    def show(self, rows: list[RunRow], now: float) -> None:
        self.rows_by_id = {r.run_id: r for r in rows}
        self.marked = [m for m in self.marked if m in self.rows_by_id]
        cells = [self._cells(r, now) for r in rows]
        if cells == self._shown:
            return
        self._shown = cells
        selected = self.selected_id()
        fill_table(self, [(name or "mark", name) for name in COLUMNS], cells, [r.run_id for r in rows])
        if selected in self.rows_by_id:
            self.move_cursor(row=self.get_row_index(selected))

    def _cells(self, row: RunRow, now: float) -> tuple:
        badge, style = state_badge(row.state)
        step = f"{row.step:,}/{row.total_steps:,}" if row.total_steps else f"{row.step:,}"
        mark = "●" if row.run_id in self.marked else " "
        return (mark, row.run_id, Text(badge, style=style), row.stage, step, fmt_num(row.loss),
                fmt_age(row.updated, now))

    def selected_id(self) -> str | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # noqa: BLE001 - an empty or changing table has no selection
            return None
        return key.value

    def toggle_mark(self) -> list[str]:
        """Mark or unmark the selected run (at most two marks: the oldest mark is dropped)."""
        run_id = self.selected_id()
        if run_id is None:
            return self.marked
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked = (self.marked + [run_id])[-2:]
        self._shown = None
        return self.marked
