"""FP8 events: the latest per-layer-group statistics of an FP8 run, the step they are for, and
how many such snapshots arrived (the FP8 tab shows only when there was one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dswb.tui.sanitize import clean_layers, step_value

if TYPE_CHECKING:
    from dswb.tui.model import RunModel


def on_fp8(model: RunModel, event: dict) -> None:
    layers = event.get("layers")
    if layers.__class__ is dict:
        model.fp8_last = clean_layers(layers)
        step = event.get("step")
        model.fp8_step = step_value(step) if step is not None else None
        model.fp8_events += 1
