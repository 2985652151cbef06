"""One run's dashboard: header, progress, plots, statistics, system, log, alerts, batching, FP8.

The screen owns no data: on `RunUpdated` the app calls `refresh_run(follower)`, which reads the
follower's model under its lock and hands each widget plain values (plots get a source that
returns downsampled views). Controls write the run's `control.jsonl`; stop asks first.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.lazy import Lazy
from textual.widgets import Footer, TabbedContent, TabPane

from dswb.rundir import RunPaths
from dswb.tui.format import fmt_age
from dswb.tui.model import RunModel, StageModel
from dswb.tui.widgets import (AlertsPanel, BatchingPanel, EvalTable, Fp8Panel, HeaderInfo, LogTail,
                              MetricPlot, RunHeader, RunProgress, StatsTable, SystemPanel)

if TYPE_CHECKING:
    from dswb.tui.follower import RunFollower

# (plot id, title, [(label, metric)]): "eval:" metrics come from `eval` events.
OVERVIEW_PLOTS = (
    ("plot-loss", "loss", [("train", "loss"), ("val", "eval:val_loss")]),
    ("plot-lr", "learning rate", [("lr", "lr")]),
    ("plot-grad_norm", "grad norm", [("grad_norm", "grad_norm")]),
    ("plot-tokens_per_s", "tokens/s", [("tokens/s", "tokens_per_s")]),
)
RL_PLOTS = (
    ("plot-reward", "reward", [("reward", "reward")]),
    ("plot-kl", "KL", [("kl", "kl")]),
    ("plot-entropy", "entropy", [("entropy", "entropy")]),
    ("plot-clip_frac", "clip fraction", [("clip_frac", "clip_frac")]),
)
EVAL_PLOTS = (
    ("plot-task_acc", "eval accuracy", [("task_acc", "eval:task_acc")]),
    ("plot-val_loss", "eval loss", [("val_loss", "eval:val_loss")]),
)
SYSTEM_PLOTS = (
    ("plot-cpu", "CPU %", [("cpu", "system:cpu_pct")]),
    ("plot-gpu", "GPU util %", [("gpu", "system:gpu_util_pct")]),
)
TABS = ("overview", "rl", "eval", "stats", "system", "log", "alerts", "batching", "fp8")
ALL_PLOTS = OVERVIEW_PLOTS + RL_PLOTS + EVAL_PLOTS + SYSTEM_PLOTS
TAB_PLOTS = {tab: {spec[0] for spec in specs} for tab, specs in
             (("overview", OVERVIEW_PLOTS), ("rl", RL_PLOTS), ("eval", EVAL_PLOTS), ("system", SYSTEM_PLOTS))}


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
    ] + [Binding(str(i + 1), f"tab('{tab}')", tab.capitalize(), show=False) for i, tab in enumerate(TABS)]

    HELP = {
        "escape": "back to the runs list (the run keeps going)",
        "s": "stop the run (asks first; it checkpoints, then exits)",
        "p": "pause a running run, resume a paused one",
        "k": "write a checkpoint now",
        "R": "resume a stopped, failed or lost run from its last checkpoint",
        "[ ]": "show the previous / next stage",
        "1-9": "tabs: overview, RL, eval, stats, system, log, alerts, batching, FP8",
    }

    def __init__(self, paths: RunPaths, min_redraw_s: float = 0.1) -> None:
        super().__init__(name=f"dashboard-{paths.run_id}")
        self.paths = paths
        self.stage_name: str | None = None
        self.follower: RunFollower | None = None
        self.min_redraw_s = min_redraw_s
        self.redraws = 0
        self._last_redraw = 0.0
        self._redraw_timer = None
        self._stale = True
        self._widget_cache: dict[type, list] = {}
        self._error_shown = False

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
            with TabPane("Eval", id="eval"):
                with Lazy(Vertical()):
                    yield EvalTable(id="eval-table")
                    with Grid(id="eval-plots", classes="plot-grid two-up"):
                        yield from self._plots(EVAL_PLOTS)
            with TabPane("Stats", id="stats"):
                yield Lazy(StatsTable(id="stats-table"))
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
        yield Footer()

    def on_mount(self) -> None:
        tabs = self.query_one(TabbedContent)
        for tab in ("rl", "fp8"):
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
        def source(max_points: int):
            follower = self.follower
            if follower is None:
                return []
            model = follower.model
            out = []
            with model.lock:
                stage = model.shown_stage(self.stage_name)
                for label, metric in series:
                    history = _history(model, stage, metric)
                    if history is not None and history.n:
                        xs, ys = history.view(max_points)
                        out.append((label, xs, ys))
            return out
        return source

    def _tick(self) -> None:
        """Once a second: keep the "updated … ago" text honest between events."""
        if self.follower is not None and self.is_current:
            self._update_header(self.follower.model)

    def refresh_run(self, follower: RunFollower) -> None:
        """Redraw from the follower's model (throttled to one redraw per `min_redraw_s`)."""
        self.follower = follower
        if not self.is_current:
            self._stale = True
            return
        wait = self._last_redraw + self.min_redraw_s - time.monotonic()
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
        follower = self.follower
        if follower is None:
            return
        self._stale = False
        self._last_redraw = time.monotonic()
        self.redraws += 1
        model = follower.model
        if follower.error is not None and not self._error_shown:
            self._error_shown = True
            self.notify(f"cannot follow {self.run_id}: {follower.error}", severity="error", timeout=30)
        tabs = self.query_one(TabbedContent)
        with self.app.batch_update(), model.lock:
            stage = model.shown_stage(self.stage_name)
            self._update_header(model)
            summaries = stage.summaries() if stage else {}
            has_rl = stage is not None and model.rl_metrics_present(stage)
            self._toggle_tab(tabs, "rl", has_rl)
            self._toggle_tab(tabs, "fp8", model.fp8_events > 0)
            for table in self._widgets(StatsTable, 2):
                table.show(summaries)
            for panel in self._widgets(SystemPanel, 2):
                panel.show(model.system_last)
            alerts = list(model.alerts)
            for alerts_panel in self._widgets(AlertsPanel, 2):
                alerts_panel.show(alerts)
            log_source, log_lines, log_total = model.log_view()
            for log in self._widgets(LogTail, 2):
                log.show(log_lines, log_total, log_source)
            for eval_table in self._widgets(EvalTable, 1):
                eval_table.show([(s.name, s.eval_series["val_loss"].last_x if "val_loss" in s.eval_series else None,
                                  s.eval_last) for s in model.stages.values() if s.eval_last])
            batching = (stage.batching if stage is not None else None) or model.batching
            for batching_panel in self._widgets(BatchingPanel, 1):
                batching_panel.show(batching, summaries)
            for plot in self._widgets(MetricPlot, len(ALL_PLOTS)):
                if plot.id == "plot-gpu":
                    plot.display = "gpu_util_pct" in model.system_series
            for fp8 in self._widgets(Fp8Panel, 1):
                fp8.show(model.fp8_last, model.fp8_step, model.fp8_events)
            self._update_alert_tab(tabs, len(alerts))
        self.replot_visible(tabs.active)

    def replot_visible(self, active_tab: str) -> None:
        """Rebuild the plots of the shown tab (the others replot when they are shown)."""
        for plot in self._widgets(MetricPlot, len(ALL_PLOTS)):
            if plot.display and plot.id in TAB_PLOTS.get(active_tab, ()):
                plot.replot()

    def _widgets(self, kind: type, expected: int) -> list:
        """The screen's widgets of a kind, queried until all `expected` have mounted (some tabs
        mount lazily), then cached: a DOM query per widget kind per redraw is not free."""
        cached = self._widget_cache.get(kind)
        if cached is None or len(cached) < expected:
            cached = self._widget_cache[kind] = list(self.query(kind))
        return cached

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
                run_id=self.run_id, state=model.state, stage=stage.name if stage else str(status.get("stage") or "-"),
                stage_index=names.index(stage.name) + 1 if stage else 0,
                stage_count=max(len(names), len(status.get("stages") or [])), step=step, total_steps=total,
                loss=loss, error=status.get("error") or model.error)
            updated = fmt_age(status.get("updated") or model.last_t, self.app.clock())
            tokens = metrics.get("tokens_per_s") if isinstance(metrics.get("tokens_per_s"), (int, float)) else None
        self.query_one(RunHeader).show(info)
        self.query_one(RunProgress).show(step, total, eta, tokens, model.state, updated)

    @staticmethod
    def _toggle_tab(tabs: TabbedContent, tab: str, show: bool) -> None:
        hidden = tabs.get_tab(tab).display is False
        if show and hidden:
            tabs.show_tab(tab)
        elif not show and not hidden:
            tabs.hide_tab(tab)

    @staticmethod
    def _update_alert_tab(tabs: TabbedContent, count: int) -> None:
        tabs.get_tab("alerts").label = f"Alerts ({count})" if count else "Alerts"

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if self.follower is not None:
            self.redraw()  # fills a tab mounted lazily and replots its plots

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


def _history(model: RunModel, stage: StageModel | None, metric: str):
    if metric.startswith("system:"):
        return model.system_series.get(metric[7:])
    if stage is None:
        return None
    if metric.startswith("eval:"):
        return stage.eval_series.get(metric[5:])
    return stage.series.get(metric)
