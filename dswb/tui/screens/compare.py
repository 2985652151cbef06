"""Two runs side by side: their loss curves overlaid, and a small table of headline numbers."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from dswb.rundir import RunPaths
from dswb.tui.format import state_badge
from dswb.util.fmt import fmt_num
from dswb.tui.widgets import MetricPlot
from dswb.tui.widgets._tables import fill_table

COLUMNS = [(key, label) for key, label in (("which", ""), ("run", "run"), ("state", "state"), ("stage", "stage"),
                                          ("step", "step"), ("last", "last loss"), ("min", "min loss"),
                                          ("val", "val loss"), ("tps", "tokens/s"))]


class CompareScreen(Screen):
    """Loss of run A and run B on one plot (each run's current stage)."""

    BINDINGS = [Binding("escape", "back", "Runs"), Binding("v", "toggle_val", "Train/val loss")]
    HELP = {"escape": "back to the runs list", "v": "switch between training and validation loss"}

    def __init__(self, a: RunPaths, b: RunPaths) -> None:
        super().__init__(name=f"compare-{a.run_id}-{b.run_id}")
        self.runs = [a, b]
        self.followers: dict = {}
        self.metric = "loss"

    def watched_runs(self) -> set[str]:
        return {p.run_id for p in self.runs}

    def compose(self) -> ComposeResult:
        yield Static(f"Compare  A: {self.runs[0].run_id}   B: {self.runs[1].run_id}", id="compare-title")
        yield MetricPlot("loss", id="compare-plot")
        yield DataTable(id="compare-table", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(MetricPlot).source = self._source
        for paths in self.runs:
            self.followers[paths.run_id] = self.app.follow(paths)
        self.redraw()

    def on_unmount(self) -> None:
        for paths in self.runs:
            self.app.unfollow(paths.run_id)

    def on_screen_resume(self) -> None:
        self.redraw()

    def refresh_run(self, follower) -> None:
        self.followers[follower.model.run_id] = follower
        if self.is_current:
            self.redraw()

    def _source(self):
        out = []
        for label, paths in zip("AB", self.runs):
            follower = self.followers.get(paths.run_id)
            if follower is None:
                continue
            model = follower.model
            with model.lock:
                stage = model.shown_stage()
                if stage is None:
                    continue
                history = (stage.eval_series if self.metric == "val_loss" else stage.series).get(self.metric)
                if history is not None and history.n:
                    xs, ys = history.points()
                    out.append((f"{label} {_short(paths.run_id)}", xs, ys))  # checked by the chart
        return out, None

    def redraw(self) -> None:
        rows = []
        for label, paths in zip("AB", self.runs):
            follower = self.followers.get(paths.run_id)
            if follower is None:
                continue
            model = follower.model
            with model.lock:
                stage = model.shown_stage()
                loss = stage.series.get("loss") if stage else None
                tps = stage.series.get("tokens_per_s") if stage else None
                badge, style = state_badge(model.state)
                rows.append((label, paths.run_id, Text(badge, style=style), stage.name if stage else "-",
                             fmt_num(stage.last_step if stage else 0),
                             fmt_num(loss.last_y if loss and loss.n else None),
                             fmt_num(loss.min if loss and loss.n else None),
                             fmt_num(stage.eval_last.get("val_loss") if stage else None),
                             fmt_num(tps.mean if tps and tps.n else None)))
        fill_table(self.query_one(DataTable), COLUMNS, rows, [r[0] for r in rows])
        self.query_one(MetricPlot).replot()

    def action_back(self) -> None:
        self.app.back_to_runs()

    def action_toggle_val(self) -> None:
        self.metric = "val_loss" if self.metric == "loss" else "loss"
        plot = self.query_one(MetricPlot)
        plot.metric_title = "validation loss" if self.metric == "val_loss" else "loss"
        plot.replot()


def _short(run_id: str) -> str:
    """`20250101-120000-demo` -> `demo (0101-1200)`: tells runs apart in a narrow legend."""
    parts = run_id.split("-", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return f"{parts[2]} ({parts[0][4:]}-{parts[1][:4]})"
    return run_id
