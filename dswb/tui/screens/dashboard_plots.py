"""The dashboard's plots: which metrics each tab plots, and where a plot gets its points.

A plot spec is (plot id, title, [(label, metric)]): "eval:" metrics come from `eval` events,
"system:" ones from `system` events (plotted over seconds, not steps), and "a|b" takes the
first of the names the run has (older runs wrote clip_frac). Instead of the list, a function of
the stage's metric names gives the series of a plot whose metrics vary by run (one per reward
source). A plot's source reads the screen's follower model under its lock, for the stage the
screen shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dswb.tui.chart import PLOT_LIMIT
from dswb.tui.reasoning import reward_source_names
from dswb.tui.widgets import MetricPlot

if TYPE_CHECKING:
    from dswb.tui.model import RunModel
    from dswb.tui.model_stage import StageModel
    from dswb.tui.screens.dashboard import DashboardScreen

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


def reward_mean_series(names) -> list[tuple[str, str]]:
    """(source, metric) of every `rewards/<source>/mean` among a stage's metric `names`."""
    return [(source, f"rewards/{source}/mean") for source in reward_source_names(names)]


# A reasoning run's RL stage (shown with the RL plots when the stage has `reasoning/*` metrics).
REASONING_PLOTS = (
    ("plot-reasoning-rewards", "reward by source", reward_mean_series),
    ("plot-reasoning-format", "format rate & accuracy", [("format", "reasoning/format_rate"),
                                                         ("accuracy", "reasoning/accuracy")]),
    ("plot-reasoning-think", "thinking length (tokens)", [("mean", "reasoning/think_mean_tokens"),
                                                          ("max", "reasoning/think_max_tokens")]),
)
EVAL_PLOTS = (
    ("plot-task_acc", "eval accuracy", [("task_acc", "eval:task_acc"), ("pair_acc", "eval:pair_acc")]),
    ("plot-val_loss", "eval loss", [("val_loss", "eval:val_loss")]),
)
SYSTEM_PLOTS = (
    ("plot-cpu", "CPU %", [("cpu", "system:cpu_pct")]),
    ("plot-gpu", "GPU util %", [("gpu", "system:gpu_util_pct")]),
)
TAB_PLOTS = {tab: tuple(spec[0] for spec in specs) for tab, specs in
             (("overview", OVERVIEW_PLOTS), ("rl", RL_PLOTS + REASONING_PLOTS), ("eval", EVAL_PLOTS),
              ("system", SYSTEM_PLOTS))}


def metric_plots(screen: DashboardScreen, specs, xlabel: str = "step"):
    """A `MetricPlot` per spec, each reading its metrics through `screen`."""
    for plot_id, title, series in specs:
        plot = MetricPlot(title, xlabel=xlabel, id=plot_id)
        plot.source = metric_source(screen, series)
        yield plot


def metric_source(screen: DashboardScreen, series):
    """A plot's source: [(label, xs, ys, plottable)] of the metrics the run has, and the x end
    (the stage's total steps; None for system plots). `series`: [(label, metric)], or a function
    of the stage's metric names that returns them."""
    over_time = not callable(series) and series[0][1].startswith("system:")

    def source():
        follower = screen.follower
        if follower is None:
            return [], None
        model = follower.model
        out = []
        with model.lock:
            stage = model.shown_stage(screen.stage_name)
            wanted = series if not callable(series) else series(stage.series if stage is not None else ())
            for label, metric in wanted:
                history = _history(model, stage, metric)
                if history is not None and history.n:
                    xs, ys = history.points()
                    out.append((label, xs, ys, _plottable(history)))
            x_end = stage.total_steps if stage is not None and stage.total_steps > 0 else None
        return out, (None if over_time else x_end)
    return source


def _plottable(history) -> bool:
    """Whether a history's points can go to the chart unchecked (finite, in x order, within
    the chart's range): its all-time min and max say so."""
    return -PLOT_LIMIT <= history.min and history.max <= PLOT_LIMIT


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
