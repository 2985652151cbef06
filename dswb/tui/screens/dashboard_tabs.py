"""The dashboard's tabs: their names, the layout of each pane, and the tab strip's state.

Only the overview is built before the first frame; the other panes mount right after (`Lazy`)
and get their data when shown. The RL, FP8 and samples tabs are hidden until the run has what
they show, and so is the RL tab's reasoning panel; the alerts tab's label counts the alerts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.lazy import Lazy
from textual.widgets import TabbedContent, TabPane

from dswb.tui.screens.dashboard_plots import (EVAL_PLOTS, OVERVIEW_PLOTS, REASONING_PLOTS, RL_PLOTS, SYSTEM_PLOTS,
                                              metric_plots)
from dswb.tui.widgets import (AlertsPanel, BatchingPanel, EvalTable, Fp8Panel, LogTail, PipelineTable, ReasoningFacts,
                              RlFacts, SamplesPanel, StatsTable, SystemPanel)

if TYPE_CHECKING:
    from dswb.tui.screens.dashboard import DashboardScreen

TABS = ("overview", "rl", "eval", "stats", "system", "log", "alerts", "batching", "fp8", "samples")
OPTIONAL_TABS = ("rl", "fp8", "samples")  # shown only when the run has what they show


def compose_tabs(screen: DashboardScreen) -> ComposeResult:
    """The tabbed body of the dashboard; its plots read through `screen`."""
    with TabbedContent(initial="overview", id="tabs"):
        with TabPane("Overview", id="overview"):
            with Horizontal(id="overview-body"):
                with Grid(id="plots", classes="plot-grid"):
                    yield from metric_plots(screen, OVERVIEW_PLOTS)
                with VerticalScroll(id="side"):
                    yield StatsTable(compact=True, id="side-stats")
                    yield SystemPanel(id="side-system", classes="panel")
                    yield AlertsPanel(limit=3, explain=False, id="side-alerts", classes="panel")
                    yield LogTail(id="side-log")
        with TabPane("RL", id="rl"):
            with Lazy(Grid(id="rl-plots", classes="plot-grid")):
                yield from metric_plots(screen, RL_PLOTS)
                yield RlFacts(id="rl-facts", classes="panel")
            with Lazy(Grid(id="rl-reasoning", classes="plot-grid")):  # a reasoning run's stage only
                yield from metric_plots(screen, REASONING_PLOTS)
                yield ReasoningFacts(id="reasoning-facts", classes="panel")
        with TabPane("Eval", id="eval"):
            with Lazy(Vertical()):
                yield PipelineTable(id="pipeline-table")
                yield EvalTable(id="eval-table")
                with Grid(id="eval-plots", classes="plot-grid two-up"):
                    yield from metric_plots(screen, EVAL_PLOTS)
        with TabPane("Stats", id="stats"):
            with Lazy(VerticalScroll(id="stats-scroll")):
                yield StatsTable(id="stats-table")
        with TabPane("System", id="system"):
            with Lazy(Vertical()):
                yield SystemPanel(id="system-panel", classes="panel")
                with Grid(id="system-plots", classes="plot-grid two-up"):
                    yield from metric_plots(screen, SYSTEM_PLOTS, xlabel="seconds")
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


def toggle_tab(tabs: TabbedContent, tab: str, show: bool) -> None:
    """Show or hide an optional tab (only when that changes anything)."""
    hidden = tabs.get_tab(tab).display is False
    if show and hidden:
        tabs.show_tab(tab)
    elif not show and not hidden:
        tabs.hide_tab(tab)


def label_alert_tab(tabs: TabbedContent, count: int) -> None:
    """`Alerts (3)`, or `Alerts` when there are none."""
    label = f"Alerts ({count})" if count else "Alerts"
    tab = tabs.get_tab("alerts")
    if str(tab.label) != label:
        tab.label = label
