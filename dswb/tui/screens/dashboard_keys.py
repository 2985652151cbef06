"""The dashboard's keys: its bindings (controls, stages, a digit per tab, `e` for the Experts tab of
a Mixture-of-Experts run, unfolding the thinking of a reasoning run's samples) and their help."""

from __future__ import annotations

from textual.binding import Binding

from dswb.tui.screens.dashboard_tabs import TABS

TAB_KEYS = {tab: str((i + 1) % 10) for i, tab in enumerate(TABS)}  # 1-9, then 0 for samples
TAB_KEYS["experts"] = "e"  # the Experts tab (the dashboard adds it; shown with routing statistics)

BINDINGS = [
    Binding("escape", "back", "Runs"),
    Binding("s", "stop", "Stop"),
    Binding("p", "pause_resume", "Pause/Resume"),
    Binding("k", "checkpoint", "Checkpoint"),
    Binding("R", "restart", "Resume run", show=False),
    Binding("left_square_bracket", "stage(-1)", "Prev stage", show=False, key_display="["),
    Binding("right_square_bracket", "stage(1)", "Next stage", show=False, key_display="]"),
    Binding("t", "toggle_think", "Thinking"),  # shown only on samples that have a thinking
    Binding(TAB_KEYS["experts"], "tab('experts')", "Experts"),  # shown only when the run has routing statistics
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
EXPERTS_HELP = {"e": "experts: Mixture-of-Experts routing (load per expert and layer, imbalance, dead experts)"}
THINK_HELP = {"t": "samples of a reasoning run: unfold the thinking of each completion in full, or fold it again"}
