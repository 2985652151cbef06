"""Tracker sinks: the run's events also written to TensorBoard, MLflow, W&B and trackio (`[monitor] report_to`).

`events.jsonl` stays the record; a sink is a copy for the tools teams look at, fed live through a
`SinkPump` (rank 0 only: the other ranks' monitors never get one) or afterwards by
`dswb runs export` (`export_events`). Another tracker is one more `Sink` subclass registered in
`SINKS` and in `dswb.config.load.SINK_LIBRARIES`. See docs/sinks.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from dswb.engine.telemetry.sinks.base import Sink
from dswb.engine.telemetry.sinks.mlflow_sink import MlflowSink
from dswb.engine.telemetry.sinks.pump import SinkPump, SinkTee
from dswb.engine.telemetry.sinks.tensorboard_sink import TensorBoardSink
from dswb.engine.telemetry.sinks.trackio_sink import TrackioSink
from dswb.engine.telemetry.sinks.wandb_sink import WandbSink

SINKS: dict[str, type[Sink]] = {"tensorboard": TensorBoardSink, "mlflow": MlflowSink, "wandb": WandbSink,
                                "trackio": TrackioSink}

__all__ = ["SINKS", "MlflowSink", "Sink", "SinkPump", "SinkTee", "TensorBoardSink", "TrackioSink", "WandbSink",
           "export_events", "make_sinks"]


def make_sinks(names: Iterable[str], target: str | None = None, continue_run: bool = True) -> list[Sink]:
    return [SINKS[name](target=target, continue_run=continue_run) for name in names]


def export_events(sink: Sink, run_dir: Path, config: dict, events: Iterable[dict]) -> int:
    """Write a finished (or running) run's events to `sink`, on this thread; returns how many."""
    sink.open(run_dir, config)
    count = 0
    try:
        for event in events:
            sink.write(event)
            count += 1
    finally:
        sink.close()
    return count
