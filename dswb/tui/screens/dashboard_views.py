"""What each dashboard tab shows: one function per tab, called under the model's lock with the
stage on screen, that hands plain values to the tab's widgets.

`find(widget_id)` is the screen's widget lookup; it returns None for a widget of a lazily
mounted tab that is not there yet (the screen redraws once it is), so each view skips it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dswb.tui.model_rl import has_reasoning_metrics, unscorable_totals

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dswb.tui.model import RunModel
    from dswb.tui.model_stage import StageModel

    Find = Callable[[str], Any]


def show_overview(find: Find, model: RunModel, stage: StageModel | None) -> None:
    if table := find("side-stats"):
        table.show(stage.summaries() if stage else {})
    if panel := find("side-system"):
        panel.show(model.system_last, model.ranks)
    if alerts := find("side-alerts"):
        alerts.show(list(model.alerts))
    if log := find("side-log"):
        log.show(*_log_args(model))


def show_rl(find: Find, model: RunModel, stage: StageModel | None) -> None:
    if facts := find("rl-facts"):
        facts.show(stage.last_metrics if stage else {})
    reasoning = stage is not None and has_reasoning_metrics(stage)
    if panel := find("rl-reasoning"):
        panel.display = reasoning
    if reasoning and (facts := find("reasoning-facts")):
        facts.show(stage.last_metrics, unscorable_totals(stage))


def show_eval(find: Find, model: RunModel, stage: StageModel | None) -> None:
    if pipeline := find("pipeline-table"):
        pipeline.show(model.pipeline())
    if table := find("eval-table"):
        table.show([(s.name, s.eval_series["val_loss"].last_x if "val_loss" in s.eval_series else None,
                     s.eval_last) for s in model.stages.values() if s.eval_last])


def show_stats(find: Find, model: RunModel, stage: StageModel | None) -> None:
    if table := find("stats-table"):
        table.show(stage.summaries() if stage else {})


def show_system(find: Find, model: RunModel, stage: StageModel | None) -> None:
    if panel := find("system-panel"):
        panel.show(model.system_last, model.ranks)
    if gpu := find("plot-gpu"):
        gpu.display = "gpu_util_pct" in model.system_series


def show_log(find: Find, model: RunModel, stage: StageModel | None) -> None:
    if log := find("log-tail"):
        log.show(*_log_args(model))


def show_alerts(find: Find, model: RunModel, stage: StageModel | None) -> None:
    if panel := find("alerts-panel"):
        panel.show(list(model.alerts))


def show_batching(find: Find, model: RunModel, stage: StageModel | None) -> None:
    if panel := find("batching-panel"):
        batching = (stage.batching if stage is not None else None) or model.batching
        panel.show(batching, stage.summaries() if stage else {})


def show_fp8(find: Find, model: RunModel, stage: StageModel | None) -> None:
    if panel := find("fp8-panel"):
        panel.show(model.fp8_last, model.fp8_step, model.fp8_events)


def show_samples(find: Find, model: RunModel, stage: StageModel | None) -> None:
    if panel := find("samples-panel"):
        panel.show(model.samples[-1] if model.samples else None, model.samples_total)


TAB_VIEWS = {"overview": show_overview, "rl": show_rl, "eval": show_eval, "stats": show_stats,
             "system": show_system, "log": show_log, "alerts": show_alerts, "batching": show_batching,
             "fp8": show_fp8, "samples": show_samples}


def _log_args(model: RunModel) -> tuple[list[dict], int, str]:
    source, lines, total = model.log_view()
    return lines, total, source
