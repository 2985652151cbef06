"""The runs list: every run under the runs root with its state, stage, step and last loss."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from dswb.tui.follower import RunRow
from dswb.tui.widgets import RunSummary, RunsTable


class RunsScreen(Screen):
    """Select a run to watch (enter), mark two to compare (space, then c), or launch one (n)."""

    BINDINGS = [
        Binding("enter", "open", "Open", show=False),
        Binding("n", "app.launch", "New run"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("s", "stop", "Stop"),
        Binding("p", "pause_resume", "Pause/Resume", show=False),
        Binding("k", "checkpoint", "Checkpoint", show=False),
        Binding("R", "restart", "Resume run", show=False),
        Binding("r", "rescan", "Rescan", show=False),
    ]

    HELP = {
        "enter": "open the run under the cursor",
        "n": "launch a new run from a preset",
        "space": "mark / unmark a run (two marks: compare them)",
        "c": "overlay the loss of the two marked runs (or the marked and the selected one)",
        "s / p / k": "stop (asks first) / pause or resume / checkpoint the selected run",
        "R": "resume a stopped, failed or lost run from its last checkpoint",
        "r": "rescan the runs root now",
    }

    def compose(self) -> ComposeResult:
        yield Static(f"Runs in {self.app.root_label}", id="runs-title")
        yield RunsTable(id="runs-table")
        yield RunSummary(id="run-summary")
        yield Footer()

    def on_screen_resume(self) -> None:
        self.app.scanner.set_active(True)  # scan every second while the list is on screen

    def on_screen_suspend(self) -> None:
        self.app.scanner.set_active(False)

    def on_mount(self) -> None:
        self.show_rows(self.app.runs)
        self.set_interval(5.0, lambda: self.show_rows(self.app.runs))  # keep "updated … ago" current
        self.app.screen_mounted()

    def show_rows(self, rows: list[RunRow]) -> None:
        table = self.query_one(RunsTable)
        table.show(rows, self.app.clock())
        self._update_summary()

    def _update_summary(self) -> None:
        table = self.query_one(RunsTable)
        run_id = table.selected_id()
        hint = (f"No runs under {self.app.root_label} yet. Press n to launch one "
                "(the smoke preset trains for about a minute on a CPU).") if not table.rows_by_id else ""
        self.query_one(RunSummary).show(table.rows_by_id.get(run_id) if run_id else None, hint,
                                        self.app.root_label)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._update_summary()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def selected(self) -> RunRow | None:
        table = self.query_one(RunsTable)
        run_id = table.selected_id()
        return table.rows_by_id.get(run_id) if run_id else None

    def action_open(self) -> None:
        row = self.selected()
        if row is not None:
            self.app.open_run(row.paths)

    def action_mark(self) -> None:
        table = self.query_one(RunsTable)
        table.toggle_mark()
        table.show(list(table.rows_by_id.values()), self.app.clock())

    def action_compare(self) -> None:
        table = self.query_one(RunsTable)
        ids = list(table.marked)
        selected = table.selected_id()
        if len(ids) < 2 and selected and selected not in ids:
            ids.append(selected)
        if len(ids) < 2:
            self.notify("mark two runs with space, or mark one and select another, then press c",
                        severity="warning")
            return
        self.app.open_compare(table.rows_by_id[ids[0]].paths, table.rows_by_id[ids[1]].paths)

    def action_stop(self) -> None:
        if (row := self.selected()) is not None:
            self.app.confirm_stop(row.paths)

    def action_pause_resume(self) -> None:
        if (row := self.selected()) is not None:
            self.app.send_control(row.paths, "resume" if row.state == "paused" else "pause")

    def action_checkpoint(self) -> None:
        if (row := self.selected()) is not None:
            self.app.send_control(row.paths, "checkpoint")

    def action_restart(self) -> None:
        if (row := self.selected()) is not None:
            self.app.resume_run(row.paths)

    def action_rescan(self) -> None:
        self.app.scanner.rescan()
