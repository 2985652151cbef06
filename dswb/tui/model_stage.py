"""One stage of a run (`StageModel`) and the events that fold into it.

`stage_start` and `stage_end` open and close a stage (`stage_start` also says how many of the model's
parameters it trains: `trainable_text`), `metrics` and `eval` extend its metric
histories (training metrics through the batch's `PendingPoints`, eval metrics one point at a
time), and `batching` records its batching snapshot. Each handler takes the `RunModel` and one
event, and raises on an event it cannot use (the model counts it as a bad event).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dswb.rundir.pipeline import fold_eval, new_facts
from dswb.tui.history import SeriesHistory, series_history
from dswb.tui.sanitize import (MAX_SERIES, as_dict, clean_batching, clean_metrics, line_text, name_text, number,
                               safe_name, step_value)
from dswb.util.fmt import fmt_num

if TYPE_CHECKING:
    from dswb.tui.model import RunModel


@dataclass
class StageModel:
    """One stage of a run: its histories by metric name and its statistics."""

    name: str
    total_steps: int = 0
    last_step: int = 0
    state: str = "running"
    model_info: dict = field(default_factory=dict)
    data_info: dict = field(default_factory=dict)
    final_path: str | None = None
    series: dict[str, SeriesHistory] = field(default_factory=dict)
    eval_series: dict[str, SeriesHistory] = field(default_factory=dict)
    eval_last: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    batching: dict | None = None
    facts: dict = field(default_factory=new_facts)  # the pipeline table's view of this stage
    dropped_series: int = 0  # metric names beyond MAX_SERIES, not kept

    def history(self, name: str) -> SeriesHistory | None:
        return self.series.get(name) or self.eval_series.get(name)

    def summaries(self) -> dict[str, dict[str, float]]:
        """Statistics per metric (mean, std, min, max, last...), sorted by name."""
        return {name: h.summary() for name, h in sorted(self.series.items()) if h.n}

    def trainable_text(self) -> str:
        return trainable_text(self.model_info)


def trainable_text(model_info: dict) -> str:
    """`trainable 590k of 124M (0.48%)` when a stage trains part of its model's parameters (LoRA adapters:
    the `stage_start` event's model has `trainable` below `params`), else ''."""
    params, trainable = number(model_info.get("params")), number(model_info.get("trainable"))
    if params is None or trainable is None or not 0 <= trainable < params:
        return ""
    share = 100 * trainable / params
    percent = f"{share:.2f}%" if share < 10 else f"{share:.0f}%"
    return f"trainable {fmt_num(trainable, compact=True)} of {fmt_num(params, compact=True)} ({percent})"


def event_stage(model: RunModel, event: dict, required: bool = False) -> StageModel:
    """The stage an event names (a missing stage means the current one, unless `required`)."""
    raw = event.get("stage")
    if raw is not None and raw.__class__ is not str or required and not raw:
        raise ValueError("no stage name")
    return model.stage(safe_name(raw) if raw else None)


def on_metrics(model: RunModel, event: dict) -> None:
    stage = event_stage(model, event)
    step = step_value(event.get("step"), required=True)
    metrics = clean_metrics(event.get("metrics"))
    if step < stage.last_step:  # resumed from a checkpoint: histories rewind at this batch
        model.pending.flush()
    stage.last_step = step
    stage.last_metrics = metrics
    stage.facts["step"] = step
    if stage.facts["state"] == "pending":
        stage.facts["state"] = "running"
    model.pending.add(stage.series, stage, step, metrics)


def on_eval(model: RunModel, event: dict) -> None:
    stage = event_stage(model, event)
    step = step_value(event.get("step"), required=True)
    metrics = clean_metrics(event.get("metrics"))
    for name, value in metrics.items():
        if value is not None and value.__class__ is not float:
            continue
        history = series_history(stage.eval_series, name, model.capacity, MAX_SERIES)
        if history is None:
            continue
        history.append(step, value)
        if value is not None and value == value and abs(value) != float("inf"):
            stage.eval_last[name] = value
    fold_eval(stage.facts, metrics)


def on_stage_start(model: RunModel, event: dict) -> None:
    stage = event_stage(model, event, required=True)
    model.current_stage = stage.name
    total = number(event.get("total_steps"))
    stage.total_steps = int(total) if total is not None and 0 < total < 2 ** 53 else 0
    stage.model_info = as_dict(event.get("model"))
    stage.data_info = as_dict(event.get("data"))
    stage.state = "running"
    stage.facts.update(state="running", total_steps=stage.total_steps)


def on_stage_end(model: RunModel, event: dict) -> None:
    stage = event_stage(model, event, required=True)
    state = event.get("state")
    stage.state = name_text(state, 20) if state.__class__ is str and state else "finished"
    path = event.get("final_path")
    stage.final_path = line_text(path, 300) if path is not None else None
    stage.facts["state"] = stage.state


def on_batching(model: RunModel, event: dict) -> None:
    stage_name = event.get("stage")
    batching = clean_batching(event)
    if stage_name.__class__ is str and stage_name:
        event_stage(model, event).batching = batching
        batching["stage"] = name_text(stage_name)
    model.batching = batching
