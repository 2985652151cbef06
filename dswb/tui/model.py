"""What the dashboard knows about one run, built from its events and `status.json`.

`RunModel.ingest(events)` folds events (see docs/run-directory.md) into per-stage metric
histories with their streaming statistics (`SeriesHistory`), the latest system sample,
batching and FP8 snapshots, and bounded tails of logs, alerts and checkpoints. The follower
thread writes a model under its `lock`; the UI reads it under the same lock. No Textual here.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dswb.rundir import RunPaths, effective_state
from dswb.tui.history import SeriesHistory

LOG_TAIL = 500
ALERT_TAIL = 200
HISTORY_CAPACITY = 4096


def log_level(line: str) -> str:
    """The level word of a `train.log` line (`2025-01-01 12:00:00 WARNING ...`), else info."""
    head = line[:40].upper()
    for level in ("ERROR", "WARNING", "DEBUG"):
        if level in head:
            return level.lower()
    return "info"


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

    def history(self, name: str) -> SeriesHistory | None:
        return self.series.get(name) or self.eval_series.get(name)

    def summaries(self) -> dict[str, dict[str, float]]:
        """Statistics per metric (mean, std, min, max, last...), sorted by name."""
        return {name: h.summary() for name, h in sorted(self.series.items()) if h.n}


class RunModel:
    """The folded state of one run directory; mutate with `ingest`, read under `lock`."""

    def __init__(self, paths: RunPaths, history_capacity: int = HISTORY_CAPACITY) -> None:
        self.paths = paths
        self.lock = threading.RLock()
        self.capacity = history_capacity
        self.status: dict | None = None
        self.state = "unknown"
        self.stages: dict[str, StageModel] = {}
        self.current_stage: str | None = None
        self.config: dict = {}
        self.resumed = False
        self.system_last: dict[str, Any] = {}
        self.system_series: dict[str, SeriesHistory] = {}
        self.batching: dict | None = None
        self.fp8_last: dict[str, dict] = {}
        self.fp8_step: int | None = None
        self.fp8_events = 0
        self.logs: deque[dict] = deque(maxlen=LOG_TAIL)
        self.logs_total = 0  # lines ever appended to `logs` (the log view shows only new ones)
        self.log_lines: deque[dict] = deque(maxlen=LOG_TAIL)  # train.log, when the run writes one
        self.log_lines_total = 0
        self.out_lines: deque[dict] = deque(maxlen=LOG_TAIL)  # process.out of a detached launch
        self.out_lines_total = 0
        self.alerts: deque[dict] = deque(maxlen=ALERT_TAIL)
        self.checkpoints: deque[dict] = deque(maxlen=50)
        self.last_control: str | None = None
        self.end_state: str | None = None
        self.error: str | None = None
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.events = 0
        self.bad_lines = 0
        self.version = 0
        # Metric points gathered during one `ingest` batch: each history is extended once.
        self._pending: dict[SeriesHistory, tuple[list, list]] = {}

    @property
    def run_id(self) -> str:
        return self.paths.run_id

    # -- writing (follower thread) ----------------------------------------------------------
    def set_status(self, status: dict | None) -> bool:
        """Store a freshly read status; True when anything visible changed."""
        state = effective_state(status)
        if status is None and self.status is None:
            return False
        with self.lock:
            changed = status != self.status or state != self.state
            self.status, self.state = status, state
            if changed:
                self.version += 1
            return changed

    def stage(self, name: str | None) -> StageModel:
        name = name or self.current_stage or "run"
        stage = self.stages.get(name)
        if stage is None:
            stage = self.stages[name] = StageModel(name)
            if self.current_stage is None:
                self.current_stage = name
        return stage

    def ingest(self, events: list[dict]) -> None:
        """Fold a batch of events into the model (one lock acquisition per batch)."""
        if not events:
            return
        with self.lock:
            handlers = self._handlers
            for event in events:
                handler = handlers.get(event.get("kind"))
                if handler is not None:
                    try:
                        handler(self, event)
                    except (TypeError, ValueError, AttributeError, KeyError):
                        self.bad_lines += 1
            self._flush_pending()
            self.events += len(events)
            t = events[-1].get("t")
            if isinstance(t, (int, float)):
                if self.first_t is None:
                    first = events[0].get("t")
                    self.first_t = first if isinstance(first, (int, float)) else t
                self.last_t = t
            self.version += 1

    def _flush_pending(self) -> None:
        for history, (xs, ys) in self._pending.items():
            history.extend(xs, ys)
        self._pending.clear()

    def _on_metrics(self, event: dict) -> None:
        stage = self.stage(event.get("stage"))
        step = event.get("step") or 0
        metrics = event.get("metrics") or {}
        if step < stage.last_step:  # resumed from a checkpoint: histories rewind at this batch
            self._flush_pending()
        stage.last_step = step
        stage.last_metrics = metrics
        series = stage.series
        pending = self._pending
        for name, value in metrics.items():
            cls = value.__class__
            if cls is float or cls is int or value is None:
                history = series.get(name)
                if history is None:
                    history = series[name] = SeriesHistory(self.capacity)
                column = pending.get(history)
                if column is None:
                    column = pending[history] = ([], [])
                column[0].append(step)
                column[1].append(value)

    def _on_eval(self, event: dict) -> None:
        stage = self.stage(event.get("stage"))
        step = event.get("step") or 0
        for name, value in (event.get("metrics") or {}).items():
            history = stage.eval_series.get(name)
            if history is None:
                history = stage.eval_series[name] = SeriesHistory(self.capacity)
            if value is None or isinstance(value, (int, float)):
                history.append(step, value)
                if value is not None:
                    stage.eval_last[name] = value

    def _on_system(self, event: dict) -> None:
        metrics = event.get("metrics") or {}
        self.system_last = metrics
        t = event.get("t") or 0.0
        x = t - (self.first_t if self.first_t is not None else t)
        for name, value in metrics.items():
            history = self.system_series.get(name)
            if history is None:
                history = self.system_series[name] = SeriesHistory(self.capacity)
            if value is None or isinstance(value, (int, float)):
                history.append(x, value)

    def _on_run_start(self, event: dict) -> None:
        self.config = event.get("config") or {}
        self.resumed = bool(event.get("resumed"))
        if self.first_t is None and isinstance(event.get("t"), (int, float)):
            self.first_t = event["t"]

    def _on_stage_start(self, event: dict) -> None:
        stage = self.stage(event.get("stage"))
        self.current_stage = stage.name
        stage.total_steps = int(event.get("total_steps") or 0)
        stage.model_info = event.get("model") or {}
        stage.data_info = event.get("data") or {}
        stage.state = "running"

    def _on_stage_end(self, event: dict) -> None:
        stage = self.stage(event.get("stage"))
        stage.state = event.get("state") or "finished"
        stage.final_path = event.get("final_path")

    def _on_run_end(self, event: dict) -> None:
        self.end_state = event.get("state")
        self.error = event.get("error")

    def _on_batching(self, event: dict) -> None:
        self.batching = {"stage": event.get("stage"), "hist": event.get("hist") or {},
                         "metrics": event.get("metrics") or {}}
        if event.get("stage"):
            self.stage(event["stage"]).batching = self.batching

    def _on_fp8(self, event: dict) -> None:
        layers = event.get("layers") or {}
        if isinstance(layers, dict):
            self.fp8_last = layers
            self.fp8_step = event.get("step")
            self.fp8_events += 1

    def _on_log(self, event: dict) -> None:
        self.logs_total += 1
        self.logs.append({"t": event.get("t"), "level": event.get("level") or "info",
                          "stage": event.get("stage"), "message": str(event.get("message", ""))})

    def _on_alert(self, event: dict) -> None:
        self.alerts.append(event)
        self.logs_total += 1
        self.logs.append({"t": event.get("t"), "level": event.get("level") or "warning",
                          "stage": event.get("stage"),
                          "message": f"ALERT {event.get('code')}: {event.get('message')}"})

    def _on_checkpoint(self, event: dict) -> None:
        self.checkpoints.append(event)

    def _on_control(self, event: dict) -> None:
        self.last_control = event.get("cmd")

    _handlers = {
        "metrics": _on_metrics, "eval": _on_eval, "system": _on_system,
        "run_start": _on_run_start, "stage_start": _on_stage_start, "stage_end": _on_stage_end,
        "run_end": _on_run_end, "batching": _on_batching, "fp8": _on_fp8, "log": _on_log,
        "alert": _on_alert, "checkpoint": _on_checkpoint, "control": _on_control,
    }

    def ingest_log_lines(self, lines: list[str], source: str = "train.log") -> None:
        """Lines of `train.log` (the full human log: eval results and more than the events carry),
        or of `process.out` (what a detached launch printed, e.g. an error before training)."""
        with self.lock:
            tail = self.log_lines if source == "train.log" else self.out_lines
            for line in lines:
                tail.append({"level": log_level(line), "message": line, "raw": True})
            if source == "train.log":
                self.log_lines_total += len(lines)
            else:
                self.out_lines_total += len(lines)
            self.version += 1

    # -- reading (UI thread, under `lock`) ----------------------------------------------------
    def log_view(self) -> tuple[str, list[dict], int]:
        """(source, tail, total): `train.log` if the run has one, else its log and alert events,
        else `process.out` (a launch that failed before it could log)."""
        if self.log_lines_total:
            return "train.log", list(self.log_lines), self.log_lines_total
        if self.logs_total or not self.out_lines_total:
            return "events", list(self.logs), self.logs_total
        return "process.out", list(self.out_lines), self.out_lines_total

    def shown_stage(self, name: str | None = None) -> StageModel | None:
        """The stage to display: `name` if known, else the current one."""
        if name and name in self.stages:
            return self.stages[name]
        if self.current_stage and self.current_stage in self.stages:
            return self.stages[self.current_stage]
        return None

    def progress(self) -> tuple[int, int, float | None]:
        """(step, total_steps, eta seconds) from status.json, else from the events."""
        status = self.status or {}
        stage = self.shown_stage()
        step = status.get("step")
        total = status.get("total_steps")
        if not isinstance(step, int):
            step = stage.last_step if stage else 0
        if not isinstance(total, int) or total <= 0:
            total = stage.total_steps if stage else 0
        eta = status.get("eta_s")
        if eta is None and stage is not None:
            eta = stage.last_metrics.get("eta_s")
        if self.state in ("finished", "failed", "stopped", "lost"):
            eta = None
        return step, total, eta if isinstance(eta, (int, float)) else None

    def last_loss(self) -> float | None:
        stage = self.shown_stage()
        if stage is not None:
            value = stage.last_metrics.get("loss")
            if isinstance(value, (int, float)):
                return value
        value = ((self.status or {}).get("last_metrics") or {}).get("loss")
        return value if isinstance(value, (int, float)) else None

    def rl_metrics_present(self, stage: StageModel) -> bool:
        return any(k in stage.series for k in ("reward", "kl", "entropy", "clip_frac"))
