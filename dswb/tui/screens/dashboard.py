"""One run's dashboard: header, progress, and tabs of plots, statistics, system, log, alerts,
batching, FP8, RL and the latest RL samples.

The screen owns no data: on `RunUpdated` the app calls `refresh_run(follower)`, and at most once
per `refresh_s` the screen reads the follower's model under its lock and hands plain values to
the header and to the widgets of the tab on screen only (hidden tabs do no work; a tab is
brought up to date when it is shown). Widgets skip what did not change, and plots repaint only
the rows that did, so a live run costs a few lines of terminal output per refresh.
Controls write the run's `control.jsonl`; stop asks first.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.lazy import Lazy
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane

from dswb.rundir import RunPaths
from dswb.tui.chart import PLOT_LIMIT
from dswb.tui.format import fmt_age
from dswb.tui.model import RunModel, StageModel
from dswb.tui.widgets import (AlertsPanel, BatchingPanel, EvalTable, Fp8Panel, HeaderInfo, LogTail, MetricPlot,
                              PipelineTable, RlFacts, RunHeader, RunProgress, SamplesPanel, StatsTable, SystemPanel)

if TYPE_CHECKING:
    from dswb.tui.follower import RunFollower

DEFAULT_REFRESH_S = 1.0
# (plot id, title, [(label, metric)]): "eval:" metrics come from `eval` events, "system:" from
# `system` events; "a|b" takes the first of the names the run has (older runs wrote clip_frac).
OVERVIEW_PLOTS = (
    ("plot-loss", "loss", [("train", "loss"), ("val", "eval:val_loss")]),
    ("plot-lr", "learning rate", [("lr", "lr")]),
    ("plot-grad_norm", "grad norm", [("grad_norm", "grad_norm")]),
    ("plot-tokens_per_s", "tokens/s", [("tokens/s", "tokens_per_s")]),
)
RL_PLOTS = (
    ("plot-reward", "reward", [("reward", "reward"), ("std", "reward_std")]),
    ("plot-kl", "KL", [("kl", "kl")]),
    ("plot-entropy", "entropy", [("entropy", "entropy")]),
    ("plot-clip_ratio", "clip ratio", [("clipped", "clip_ratio|clip_frac")]),
    ("plot-length", "completion length", [("mean", "completions/mean_length")]),
)
EVAL_PLOTS = (
    ("plot-task_acc", "eval accuracy", [("task_acc", "eval:task_acc"), ("pair_acc", "eval:pair_acc")]),
    ("plot-val_loss", "eval loss", [("val_loss", "eval:val_loss")]),
)
SYSTEM_PLOTS = (
    ("plot-cpu", "CPU %", [("cpu", "system:cpu_pct")]),
    ("plot-gpu", "GPU util %", [("gpu", "system:gpu_util_pct")]),
)
TABS = ("overview", "rl", "eval", "stats", "system", "log", "alerts", "batching", "fp8", "samples")
TAB_KEYS = {tab: str((i + 1) % 10) for i, tab in enumerate(TABS)}  # 1-9, then 0 for samples
TAB_PLOTS = {tab: tuple(spec[0] for spec in specs) for tab, specs in
             (("overview", OVERVIEW_PLOTS), ("rl", RL_PLOTS), ("eval", EVAL_PLOTS), ("system", SYSTEM_PLOTS))}
OPTIONAL_TABS = ("rl", "fp8", "samples")  # shown only when the run has what they show


class DashboardScreen(Screen):
    """The live view of one run; `stage_name` None follows the current stage."""

    BINDINGS = [
        Binding("escape", "back", "Runs"),
        Binding("s", "stop", "Stop"),
        Binding("p", "pause_resume", "Pause/Resume"),
        Binding("k", "checkpoint", "Checkpoint"),
        Binding("R", "restart", "Resume run", show=False),
        Binding("left_square_bracket", "stage(-1)", "Prev stage", show=False, key_display="["),
        Binding("right_square_bracket", "stage(1)", "Next stage", show=False, key_display="]"),
    ] + [Binding(TAB_KEYS[tab], f"tab('{tab}')", tab.capitalize(), show=False) for tab in TABS]

    HELP = {
        "escape": "back to the runs list (the run keeps going)",
        "s": "stop the run (asks first; it checkpoints, then exits)",
        "p": "pause a running run, resume a paused one",
        "k": "write a checkpoint now",
        "R": "resume a stopped, failed or lost run from its last checkpoint",
        "[ ]": "show the previous / next stage",
        "1-9": "tabs: overview, RL, eval (pipeline table), stats, system, log, alerts, batching, FP8",
        "0": "samples: the latest RL rollouts (prompt, completion, rewards, advantage)",
    }

    def __init__(self, paths: RunPaths, refresh_s: float = DEFAULT_REFRESH_S) -> None:
        super().__init__(name=f"dashboard-{paths.run_id}")
        self.paths = paths
        self.stage_name: str | None = None
        self.follower: RunFollower | None = None
        self.refresh_s = refresh_s
        self.redraws = 0
        self._last_redraw = -1e9
        self._redraw_timer = None
        self._stale = True
        self._found: dict[str, object] = {}
        self._error_shown = False
        self._retry_scheduled = False
        self._retries = 0  # redraws scheduled because a lazily mounted widget was not there yet

    @property
    def run_id(self) -> str:
        return self.paths.run_id

    def watched_runs(self) -> set[str]:
        return {self.run_id}

    def _plots(self, specs, xlabel: str = "step"):
        for plot_id, title, series in specs:
            plot = MetricPlot(title, xlabel=xlabel, id=plot_id)
            plot.source = self._source(series)
            yield plot

    def compose(self) -> ComposeResult:
        # Only the overview is built before the first frame; the other tabs mount right after
        # (Lazy), and get their data when shown.
        yield RunHeader(id="run-header")
        yield RunProgress(id="progress")
        with TabbedContent(initial="overview", id="tabs"):
            with TabPane("Overview", id="overview"):
                with Horizontal(id="overview-body"):
                    with Grid(id="plots", classes="plot-grid"):
                        yield from self._plots(OVERVIEW_PLOTS)
                    with VerticalScroll(id="side"):
                        yield StatsTable(compact=True, id="side-stats")
                        yield SystemPanel(id="side-system", classes="panel")
                        yield AlertsPanel(limit=3, explain=False, id="side-alerts", classes="panel")
                        yield LogTail(id="side-log")
            with TabPane("RL", id="rl"):
                with Lazy(Grid(id="rl-plots", classes="plot-grid")):
                    yield from self._plots(RL_PLOTS)
                    yield RlFacts(id="rl-facts", classes="panel")
            with TabPane("Eval", id="eval"):
                with Lazy(Vertical()):
                    yield PipelineTable(id="pipeline-table")
                    yield EvalTable(id="eval-table")
                    with Grid(id="eval-plots", classes="plot-grid two-up"):
                        yield from self._plots(EVAL_PLOTS)
            with TabPane("Stats", id="stats"):
                with Lazy(VerticalScroll(id="stats-scroll")):
                    yield StatsTable(id="stats-table")
            with TabPane("System", id="system"):
                with Lazy(Vertical()):
                    yield SystemPanel(id="system-panel", classes="panel")
                    with Grid(id="system-plots", classes="plot-grid two-up"):
                        yield from self._plots(SYSTEM_PLOTS, xlabel="seconds")
            with TabPane("Log", id="log"):
                yield Lazy(LogTail(id="log-tail"))
            with TabPane("Alerts", id="alerts"):
                with Lazy(VerticalScroll()):
                    yield AlertsPanel(id="alerts-panel")
            with TabPane("Batching", id="batching"):
                with Lazy(VerticalScroll()):
                    yield BatchingPanel(id="batching-panel")
            with TabPane("FP8", id="fp8"):
                yield Lazy(Fp8Panel(id="fp8-panel"))
            with TabPane("Samples", id="samples"):
                with Lazy(VerticalScroll(id="samples-scroll")):
                    yield SamplesPanel(id="samples-panel", classes="panel")
        yield Footer()

    def on_mount(self) -> None:
        tabs = self.query_one(TabbedContent)
        for tab in OPTIONAL_TABS:
            tabs.hide_tab(tab)
        self.follower = self.app.follow(self.paths)
        self.refresh_run(self.follower)
        self.set_interval(1.0, self._tick)
        self.app.screen_mounted()

    def on_unmount(self) -> None:
        self.app.unfollow(self.paths.run_id)

    def on_screen_resume(self) -> None:
        if self._stale and self.follower is not None:
            self.refresh_run(self.follower)

    # -- reading the model ------------------------------------------------------------------
    def _source(self, series: list[tuple[str, str]]):
        def source():
            follower = self.follower
            if follower is None:
                return [], None
            model = follower.model
            out = []
            with model.lock:
                stage = model.shown_stage(self.stage_name)
                for label, metric in series:
                    history = _history(model, stage, metric)
                    if history is not None and history.n:
                        xs, ys = history.points()
                        out.append((label, xs, ys, _plottable(history)))
                x_end = stage.total_steps if stage is not None and stage.total_steps > 0 else None
            return out, (None if series[0][1].startswith("system:") else x_end)
        return source

    def _tick(self) -> None:
        """Once a second: keep the "updated … ago" text honest when no redraw did."""
        if self.follower is not None and self.is_current and time.monotonic() - self._last_redraw >= 0.9:
            self._update_header(self.follower.model)

    def refresh_run(self, follower: RunFollower) -> None:
        """New data: redraw now, or at the end of the current refresh period."""
        self.follower = follower
        if not self.is_current:
            self._stale = True
            return
        wait = self._last_redraw + self.refresh_s - time.monotonic()
        if wait > 0:
            if self._redraw_timer is None:
                self._redraw_timer = self.set_timer(wait, self._deferred_redraw)
            return
        self.redraw()

    def _deferred_redraw(self) -> None:
        self._redraw_timer = None
        self.redraw()

    @property
    def redraw_pending(self) -> bool:
        return self._redraw_timer is not None

    def redraw(self) -> None:
        """Bring the header and the tab on screen up to date with the model."""
        follower = self.follower
        if follower is None:
            return
        self._stale = False
        self._last_redraw = time.monotonic()
        self.redraws += 1
        model = follower.model
        if follower.error is not None and not self._error_shown:
            self._error_shown = True
            self.notify(f"reading {self.run_id}: {str(follower.error)[:200]} (still trying)", severity="warning",
                        timeout=30)
        tabs = self.query_one(TabbedContent)
        with self.app.batch_update(), model.lock:
            stage = model.shown_stage(self.stage_name)
            self._update_header(model)
            self._toggle_tab(tabs, "rl", stage is not None and model.rl_metrics_present(stage))
            self._toggle_tab(tabs, "fp8", model.fp8_events > 0)
            self._toggle_tab(tabs, "samples", model.samples_total > 0)
            self._update_alert_tab(tabs, len(model.alerts))
            active = tabs.active
            show = getattr(self, f"_show_{active}", None)
            if show is not None:
                show(model, stage)
        self.replot_visible(active)

    # One method per tab: what it shows, read under the model's lock.
    def _show_overview(self, model: RunModel, stage: StageModel | None) -> None:
        if table := self._widget("side-stats"):
            table.show(stage.summaries() if stage else {})
        if panel := self._widget("side-system"):
            panel.show(model.system_last, model.ranks)
        if alerts := self._widget("side-alerts"):
            alerts.show(list(model.alerts))
        if log := self._widget("side-log"):
            log.show(*_log_args(model))

    def _show_rl(self, model: RunModel, stage: StageModel | None) -> None:
        if facts := self._widget("rl-facts"):
            facts.show(stage.last_metrics if stage else {})

    def _show_eval(self, model: RunModel, stage: StageModel | None) -> None:
        if pipeline := self._widget("pipeline-table"):
            pipeline.show(model.pipeline())
        if table := self._widget("eval-table"):
            table.show([(s.name, s.eval_series["val_loss"].last_x if "val_loss" in s.eval_series else None,
                         s.eval_last) for s in model.stages.values() if s.eval_last])

    def _show_stats(self, model: RunModel, stage: StageModel | None) -> None:
        if table := self._widget("stats-table"):
            table.show(stage.summaries() if stage else {})

    def _show_system(self, model: RunModel, stage: StageModel | None) -> None:
        if panel := self._widget("system-panel"):
            panel.show(model.system_last, model.ranks)
        if gpu := self._widget("plot-gpu"):
            gpu.display = "gpu_util_pct" in model.system_series

    def _show_log(self, model: RunModel, stage: StageModel | None) -> None:
        if log := self._widget("log-tail"):
            log.show(*_log_args(model))

    def _show_alerts(self, model: RunModel, stage: StageModel | None) -> None:
        if panel := self._widget("alerts-panel"):
            panel.show(list(model.alerts))

    def _show_batching(self, model: RunModel, stage: StageModel | None) -> None:
        if panel := self._widget("batching-panel"):
            batching = (stage.batching if stage is not None else None) or model.batching
            panel.show(batching, stage.summaries() if stage else {})

    def _show_fp8(self, model: RunModel, stage: StageModel | None) -> None:
        if panel := self._widget("fp8-panel"):
            panel.show(model.fp8_last, model.fp8_step, model.fp8_events)

    def _show_samples(self, model: RunModel, stage: StageModel | None) -> None:
        if panel := self._widget("samples-panel"):
            panel.show(model.samples[-1] if model.samples else None, model.samples_total)

    def replot_visible(self, active_tab: str) -> None:
        """Rebuild the plots of the shown tab (the others replot when they are shown)."""
        for plot_id in TAB_PLOTS.get(active_tab, ()):
            plot = self._widget(plot_id)
            if plot is not None and plot.display:
                plot.replot()

    def _widget(self, widget_id: str):
        """A widget of this screen by id, looked up once. A tab's widgets mount lazily after the
        first frame: until then this returns None and the screen redraws once they are there."""
        widget = self._found.get(widget_id)
        if widget is None:
            found = self.query(f"#{widget_id}")
            widget = found.first() if found else None
            if widget is None:
                if not self._retry_scheduled and self._retries < 20:
                    self._retry_scheduled = True
                    self._retries += 1
                    self.call_after_refresh(self._retry)
                return None
            self._found[widget_id] = widget
        return widget

    def _retry(self) -> None:
        self._retry_scheduled = False
        self.redraw()

    def _update_header(self, model: RunModel) -> None:
        with model.lock:
            stage = model.shown_stage(self.stage_name)
            status = model.status or {}
            step, total, eta = model.progress()
            if stage is not None and self.stage_name and stage.name != model.current_stage:
                step, total, eta = stage.last_step, stage.total_steps, None
            names = list(model.stages)
            metrics = stage.last_metrics if stage else {}
            loss_history = stage.series.get("loss") if stage else None
            loss = loss_history.last_y if loss_history is not None and loss_history.n else model.last_loss()
            info = HeaderInfo(
                run_id=self.run_id, state=model.state, stage=stage.name if stage else (status.get("stage") or "-"),
                stage_index=names.index(stage.name) + 1 if stage else 0,
                stage_count=max(len(names), len(status.get("stages") or [])), step=step, total_steps=total,
                loss=loss, error=status.get("error") or model.error, world=model.world_text())
            updated = fmt_age(status.get("updated") or model.last_t, self.app.clock())
            tokens = metrics.get("tokens_per_s")
        if header := self._widget("run-header"):
            header.show(info)
        if progress := self._widget("progress"):
            progress.show(step, total, eta, tokens, model.state, updated)

    @staticmethod
    def _toggle_tab(tabs: TabbedContent, tab: str, show: bool) -> None:
        hidden = tabs.get_tab(tab).display is False
        if show and hidden:
            tabs.show_tab(tab)
        elif not show and not hidden:
            tabs.hide_tab(tab)

    @staticmethod
    def _update_alert_tab(tabs: TabbedContent, count: int) -> None:
        label = f"Alerts ({count})" if count else "Alerts"
        tab = tabs.get_tab("alerts")
        if str(tab.label) != label:
            tab.label = label

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if self.follower is not None:
            self.redraw()  # brings the tab up to date and replots its plots

    # -- actions --------------------------------------------------------------------------
    def action_back(self) -> None:
        self.app.back_to_runs()

    def action_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        if tabs.get_tab(tab).display is not False:
            tabs.active = tab

    def action_stage(self, delta: int) -> None:
        if self.follower is None:
            return
        model = self.follower.model
        with model.lock:
            names = list(model.stages)
            current = model.shown_stage(self.stage_name)
        if len(names) < 2 or current is None:
            return
        index = (names.index(current.name) + delta) % len(names)
        self.stage_name = names[index]
        self.notify(f"showing stage {self.stage_name}", timeout=2)
        self.redraw()

    def action_stop(self) -> None:
        self.app.confirm_stop(self.paths)

    def action_pause_resume(self) -> None:
        state = self.follower.model.state if self.follower else "unknown"
        self.app.send_control(self.paths, "resume" if state == "paused" else "pause")

    def action_checkpoint(self) -> None:
        self.app.send_control(self.paths, "checkpoint")

    def action_restart(self) -> None:
        self.app.resume_run(self.paths)


def _plottable(history) -> bool:
    """Whether a history's points can go to the chart unchecked (finite, in x order, within
    the chart's range): its all-time min and max say so."""
    return -PLOT_LIMIT <= history.min and history.max <= PLOT_LIMIT


def _log_args(model: RunModel) -> tuple[list[dict], int, str]:
    source, lines, total = model.log_view()
    return lines, total, source


def _history(model: RunModel, stage: StageModel | None, metric: str):
    for name in metric.split("|"):
        history = _one_history(model, stage, name)
        if history is not None and history.n:
            return history
    return None


def _one_history(model: RunModel, stage: StageModel | None, metric: str):
    if metric.startswith("system:"):
        return model.system_series.get(metric[7:])
    if stage is None:
        return None
    if metric.startswith("eval:"):
        return stage.eval_series.get(metric[5:])
    return stage.series.get(metric)
