"""One run's dashboard: header, progress, and tabs of plots, statistics, system, log, alerts,
batching, FP8, RL, the latest RL samples and Mixture-of-Experts routing (Experts).

The screen owns no data: on `RunUpdated` the app calls `refresh_run(follower)`, and at most once
per `refresh_s` the screen reads the follower's model under its lock and hands plain values to
the header and to the widgets of the tab on screen only (hidden tabs do no work; a tab is
brought up to date when it is shown). Widgets skip what did not change, and plots repaint only
the rows that did, so a live run costs a few lines of terminal output per refresh.
Controls write the run's `control.jsonl`; stop asks first.

The tabs' layout is in `dashboard_tabs`, their plots in `dashboard_plots`, what each tab shows
in `dashboard_views`, and the keys in `dashboard_keys`. The key that unfolds the thinking of a
reasoning run's samples is offered (footer, help) only where there is thinking to unfold.
The Experts tab is added here, after FP8 when the screen mounts; like the FP8 tab it shows only
once the run has `moe` events, and so does its key `e` (footer, help).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.lazy import Lazy
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane

from dswb.rundir import RunPaths
from dswb.tui.model import RunModel
from dswb.tui.model_moe import imbalance_series, moe_stats_every
from dswb.tui.reasoning import any_think
from dswb.tui.screens import dashboard_keys
from dswb.tui.screens.dashboard_plots import TAB_PLOTS
from dswb.tui.screens.dashboard_tabs import OPTIONAL_TABS, compose_tabs, label_alert_tab, toggle_tab
from dswb.tui.screens.dashboard_views import TAB_VIEWS
from dswb.tui.widgets import HeaderInfo, RunHeader, RunProgress
from dswb.tui.widgets.experts_panel import ExpertsPanel, experts_placeholder
from dswb.util.fmt import fmt_age

if TYPE_CHECKING:
    from dswb.tui.follower import RunFollower
    from dswb.tui.model_stage import StageModel

DEFAULT_REFRESH_S = 1.0
EXPERTS = "experts"  # the Experts tab (after FP8; shown once the run has `moe` events)
EXPERTS_PLOTS = ("experts-plot",)


class DashboardScreen(Screen):
    """The live view of one run; `stage_name` None follows the current stage."""

    BINDINGS = dashboard_keys.BINDINGS
    HELP = dashboard_keys.HELP

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
        self.run_has_thinking = False  # the latest samples have a thinking to unfold (`t`)
        self.thinking_shown = False  # ... and they are on screen
        self.run_has_moe = False  # the run wrote `moe` events: the Experts tab and its key `e` show

    @property
    def run_id(self) -> str:
        return self.paths.run_id

    def watched_runs(self) -> set[str]:
        return {self.run_id}

    def compose(self) -> ComposeResult:
        yield RunHeader(id="run-header")
        yield RunProgress(id="progress")
        yield from compose_tabs(self)
        yield Footer()

    async def on_mount(self) -> None:
        tabs = self.query_one(TabbedContent)
        await tabs.add_pane(TabPane("Experts", Lazy(ExpertsPanel(self._experts_curves, id="experts-panel")),
                                    id=EXPERTS), after="fp8")
        for tab in OPTIONAL_TABS + (EXPERTS,):
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
            toggle_tab(tabs, "rl", stage is not None and model.rl_metrics_present(stage))
            toggle_tab(tabs, "fp8", model.fp8_events > 0)
            toggle_tab(tabs, "samples", model.samples_total > 0)
            toggle_tab(tabs, EXPERTS, model.moe_events > 0)
            label_alert_tab(tabs, len(model.alerts))
            active = tabs.active
            show = TAB_VIEWS.get(active)
            if show is not None:
                show(self._widget, model, stage)
            elif active == EXPERTS:
                self._show_experts(model, stage)
            self.run_has_thinking = any_think(model.samples[-1]["samples"]) if model.samples else False
            run_has_moe = model.moe_events > 0
        self._offer_think_key(active == "samples" and self.run_has_thinking)
        if run_has_moe != self.run_has_moe:
            self.run_has_moe = run_has_moe
            self.refresh_bindings()
        self.replot_visible(active)

    def _show_experts(self, model: RunModel, stage: StageModel | None) -> None:
        """The Experts tab: the stage's routing statistics, or the line that says why there are none."""
        if panel := self._widget("experts-panel"):
            moe = model.moe.get(stage.name) if stage is not None else None
            panel.show(moe, experts_placeholder(model.moe_events > 0, stage.name if stage else None,
                                                moe_stats_every(model.config)))

    def _experts_curves(self):
        """The Experts tab's curve: the imbalance of the stage's worst layers, over its steps."""
        if self.follower is None:
            return [], None
        model = self.follower.model
        with model.lock:
            stage = model.shown_stage(self.stage_name)
            if stage is None:
                return [], None
            return imbalance_series(model.moe.get(stage.name)), stage.total_steps or None

    def _offer_think_key(self, shown: bool) -> None:
        """Show the `t` key in the footer while samples with a thinking are on screen."""
        if shown != self.thinking_shown:
            self.thinking_shown = shown
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "toggle_think":
            return self.thinking_shown
        if action == "tab" and parameters == (EXPERTS,):
            return self.run_has_moe
        return True

    def help_keys(self) -> dict[str, str]:
        """The keys the help lists for this run (`t` when its samples have a thinking, `e` when it
        has routing statistics)."""
        keys = dict(self.HELP)
        if self.run_has_moe:
            keys |= dashboard_keys.EXPERTS_HELP
        if self.run_has_thinking:
            keys |= dashboard_keys.THINK_HELP
        return keys

    def replot_visible(self, active_tab: str) -> None:
        """Rebuild the plots of the shown tab (the others replot when they are shown)."""
        for plot_id in TAB_PLOTS.get(active_tab, EXPERTS_PLOTS if active_tab == EXPERTS else ()):
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
                loss=loss, error=status.get("error") or model.error, world=model.world_text(),
                trainable=stage.trainable_text() if stage else "")
            updated = fmt_age(status.get("updated") or model.last_t, self.app.clock())
            tokens = metrics.get("tokens_per_s")
        if header := self._widget("run-header"):
            header.show(info)
        if progress := self._widget("progress"):
            progress.show(step, total, eta, tokens, model.state, updated)

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

    def action_toggle_think(self) -> None:
        if panel := self._widget("samples-panel"):
            panel.toggle_think()
