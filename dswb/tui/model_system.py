"""The machines of a run: `system` samples (the latest one, and a history per metric over
seconds since the run started) and the world of a distributed run (its size, parallel mode and
each rank's host, device and latest sample).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dswb.tui.history import series_history
from dswb.tui.sanitize import MAX_SERIES, STEP_LIMIT, clean_metrics, clean_ranks, name_text, number, time_value

if TYPE_CHECKING:
    from dswb.tui.model import RunModel


def on_system(model: RunModel, event: dict) -> None:
    metrics = clean_metrics(event.get("metrics"))
    t = time_value(event.get("t"))
    model.system_last = metrics
    ranks = clean_ranks(event.get("ranks"))
    if ranks:
        model.ranks = ranks
    if t is None:
        return
    start = model.first_t if model.first_t is not None else t
    x = t - start
    for name, value in metrics.items():
        if value is not None and value.__class__ is not float:
            continue
        history = series_history(model.system_series, name, model.capacity, MAX_SERIES)
        if history is None:
            continue
        history.append(x, value)


def fold_world(model: RunModel, event: dict) -> None:
    """The world a `run_start` event names: process count, parallel mode, ranks."""
    size = number(event.get("world_size"))
    model.world_size = int(size) if size is not None and 1 <= size < STEP_LIMIT else 1
    mode = event.get("parallel_mode")
    model.parallel_mode = name_text(mode, 20) if mode.__class__ is str and mode else None
    ranks = clean_ranks(event.get("ranks"))
    if ranks:
        model.ranks = ranks


def world_label(world_size: int, parallel_mode: str | None) -> str:
    """`2 x ddp` for a distributed run, else empty."""
    if world_size <= 1:
        return ""
    return f"{world_size} x {parallel_mode or 'processes'}"
