"""Run-level events: `run_start` (config, resume flag, stage order, world), `run_end` (final
state and error), `checkpoint` (a bounded list of written checkpoints) and `control` (the last
command the run acknowledged).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dswb.tui.model_system import fold_world
from dswb.tui.sanitize import ALERT_LIMIT, as_dict, clean_stages, line_text, name_text, number, time_value

if TYPE_CHECKING:
    from dswb.tui.model import RunModel


def on_run_start(model: RunModel, event: dict) -> None:
    config = as_dict(event.get("config"))
    model.config = config
    model.resumed = event.get("resumed") is True
    fold_world(model, event)
    stages = clean_stages(as_dict(config.get("run")).get("stages"))
    if stages:
        model.stage_order = stages
    t = time_value(event.get("t"))
    if model.first_t is None and t is not None:
        model.first_t = t


def on_run_end(model: RunModel, event: dict) -> None:
    state = event.get("state")
    model.end_state = name_text(state, 20) if state.__class__ is str else None
    error = event.get("error")
    model.error = line_text(error, ALERT_LIMIT) if error is not None else None


def on_checkpoint(model: RunModel, event: dict) -> None:
    model.checkpoints.append({"path": line_text(event.get("path"), 300), "step": number(event.get("step")),
                              "reason": line_text(event.get("reason"), 40)})


def on_control(model: RunModel, event: dict) -> None:
    cmd = event.get("cmd")
    model.last_control = name_text(cmd, 20) if cmd.__class__ is str else None
