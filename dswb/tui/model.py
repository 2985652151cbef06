"""What the dashboard knows about one run, built from its events and `status.json`.

`RunModel.ingest(events)` folds events (see docs/run-directory.md) into per-stage metric
histories with their streaming statistics (`SeriesHistory`), the latest system sample,
batching and FP8 snapshots, the latest RL samples, and bounded tails of logs, alerts and
checkpoints. The follower thread writes a model under its `lock`; the UI reads it under the
same lock. No Textual here.

A viewer never dies from data: every field is checked as it comes in (`dswb.tui.sanitize`),
so the model holds only what the widgets can show: finite or missing numbers, short printable
strings, bounded collections. An event that cannot be used at all counts as a bad line.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dswb.rundir import RunPaths, effective_state
from dswb.rundir.pipeline import PipelineRow, fold_eval, new_facts, pipeline_rows
from dswb.tui.history import SeriesHistory
from dswb.tui.sanitize import (ALERT_LIMIT, LOG_LIMIT, MAX_SERIES, MAX_STAGES, STEP_LIMIT, as_dict, clean_alert,
                               clean_batching, clean_layers, clean_metrics, clean_ranks, clean_samples, clean_status,
                               clean_stages, line_text, name_text, number, safe_name, step_value, text_value,
                               time_value)

LOG_TAIL = 500
ALERT_TAIL = 200
SAMPLES_TAIL = 20
HISTORY_CAPACITY = 4096
RL_METRICS = ("reward", "kl", "entropy", "clip_ratio", "clip_frac", "completions/mean_length")


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
    facts: dict = field(default_factory=new_facts)  # the pipeline table's view of this stage
    dropped_series: int = 0  # metric names beyond MAX_SERIES, not kept

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
        self.stage_order: list[str] = []  # the run's `stages` (run_start config, else status)
        self.config: dict = {}
        self.resumed = False
        self.system_last: dict[str, Any] = {}
        self.world_size = 1               # processes of a distributed run (`run_start`), else 1
        self.parallel_mode: str | None = None
        self.ranks: list[dict] = []       # each rank's host, device (GPU) and latest system sample
        self.system_series: dict[str, SeriesHistory] = {}
        self.batching: dict | None = None
        self.fp8_last: dict[str, dict] = {}
        self.fp8_step: int | None = None
        self.fp8_events = 0
        self.samples: deque[dict] = deque(maxlen=SAMPLES_TAIL)  # `samples` events (RL rollouts)
        self.samples_total = 0
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
        self.bad_lines = 0  # lines the reader could not parse plus events the model could not use
        self.bad_events = 0
        self.unknown_kinds = 0
        self.version = 0
        # Metric points gathered during one `ingest` batch: each history is extended once.
        self._pending: dict[SeriesHistory, tuple[list, list]] = {}
        self._columns_key: tuple | None = None  # the metric names (and stage) `_columns` are for
        self._columns: list = []

    @property
    def run_id(self) -> str:
        return self.paths.run_id

    # -- writing (follower thread) ----------------------------------------------------------
    def set_status(self, status: object) -> bool:
        """Store a freshly read status (anything: it is checked here); True when anything
        visible changed."""
        status = clean_status(status)
        state = effective_state(status)
        if status is None and self.status is None and state == self.state:
            return False
        with self.lock:
            changed = status != self.status or state != self.state
            self.status, self.state = status, state
            if status and not self.stage_order and status.get("stages"):
                self.stage_order = list(status["stages"])
            if changed:
                self.version += 1
            return changed

    def stage(self, name: str | None) -> StageModel:
        name = name or self.current_stage or "run"
        stage = self.stages.get(name)
        if stage is None:
            if len(self.stages) >= MAX_STAGES:
                raise ValueError("too many stages")
            stage = self.stages[name] = StageModel(name)
            if self.current_stage is None:
                self.current_stage = name
        return stage

    def _event_stage(self, event: dict, required: bool = False) -> StageModel:
        """The stage an event names (a missing stage means the current one, unless `required`)."""
        raw = event.get("stage")
        if raw is not None and raw.__class__ is not str or required and not raw:
            raise ValueError("no stage name")
        return self.stage(safe_name(raw) if raw else None)

    def ingest(self, events: list) -> None:
        """Fold a batch of events into the model (one lock acquisition per batch)."""
        if not events:
            return
        with self.lock:
            handlers = self._handlers
            first_t = last_t = None
            for event in events:
                if event.__class__ is not dict:
                    self.bad_events += 1
                    continue
                kind = event.get("kind")
                handler = handlers.get(kind) if kind.__class__ is str else None
                if handler is None:
                    self.unknown_kinds += 1
                else:
                    try:
                        handler(self, event)
                    except Exception:  # noqa: BLE001 - hostile data: count it, keep going
                        self.bad_events += 1
                t = event.get("t")
                if t.__class__ is not float or t - t != 0.0:  # the common case, a finite float, passes
                    t = time_value(t)
                if t is not None:
                    last_t = t
                    if first_t is None:
                        first_t = t
            self._flush_pending()
            self.events += len(events)
            if last_t is not None:
                if self.first_t is None:
                    self.first_t = first_t
                self.last_t = last_t
            self.version += 1

    def _flush_pending(self) -> None:
        for history, (xs, ys) in self._pending.items():
            history.extend(xs, ys)
        self._pending.clear()
        self._columns_key = None

    def _add_points(self, series: dict, stage: StageModel | None, step: int, metrics: dict) -> None:
        """Queue one step of every metric for its history. Consecutive events of a stage usually
        name the same metrics: their columns are looked up once and reused."""
        key = (id(series), tuple(metrics))
        if key != self._columns_key:
            self._columns = [self._column(series, stage, name) for name in metrics]
            self._columns_key = key
        for column, value in zip(self._columns, metrics.values()):
            if column is not None:
                column[0].append(step)
                column[1].append(value)

    def _column(self, series: dict, stage: StageModel | None, name: str) -> tuple[list, list] | None:
        history = series.get(name)
        if history is None:
            if len(series) >= MAX_SERIES:
                if stage is not None:
                    stage.dropped_series += 1
                return None
            history = series[name] = SeriesHistory(self.capacity)
        column = self._pending.get(history)
        if column is None:
            column = self._pending[history] = ([], [])
        return column

    def _on_metrics(self, event: dict) -> None:
        stage = self._event_stage(event)
        step = step_value(event.get("step"), required=True)
        metrics = clean_metrics(event.get("metrics"))
        if step < stage.last_step:  # resumed from a checkpoint: histories rewind at this batch
            self._flush_pending()
        stage.last_step = step
        stage.last_metrics = metrics
        stage.facts["step"] = step
        if stage.facts["state"] == "pending":
            stage.facts["state"] = "running"
        self._add_points(stage.series, stage, step, metrics)

    def _on_eval(self, event: dict) -> None:
        stage = self._event_stage(event)
        step = step_value(event.get("step"), required=True)
        metrics = clean_metrics(event.get("metrics"))
        for name, value in metrics.items():
            if value is not None and value.__class__ is not float:
                continue
            history = stage.eval_series.get(name)
            if history is None:
                if len(stage.eval_series) >= MAX_SERIES:
                    continue
                history = stage.eval_series[name] = SeriesHistory(self.capacity)
            history.append(step, value)
            if value is not None and value == value and abs(value) != float("inf"):
                stage.eval_last[name] = value
        fold_eval(stage.facts, metrics)

    def _on_system(self, event: dict) -> None:
        metrics = clean_metrics(event.get("metrics"))
        t = time_value(event.get("t"))
        self.system_last = metrics
        ranks = clean_ranks(event.get("ranks"))
        if ranks:
            self.ranks = ranks
        if t is None:
            return
        start = self.first_t if self.first_t is not None else t
        x = t - start
        for name, value in metrics.items():
            if value is not None and value.__class__ is not float:
                continue
            history = self.system_series.get(name)
            if history is None:
                if len(self.system_series) >= MAX_SERIES:
                    continue
                history = self.system_series[name] = SeriesHistory(self.capacity)
            history.append(x, value)

    def world_text(self) -> str:
        """`2 x ddp` for a distributed run, else empty."""
        if self.world_size <= 1:
            return ""
        return f"{self.world_size} x {self.parallel_mode or 'processes'}"

    def _on_run_start(self, event: dict) -> None:
        config = as_dict(event.get("config"))
        self.config = config
        self.resumed = event.get("resumed") is True
        size = number(event.get("world_size"))
        self.world_size = int(size) if size is not None and 1 <= size < STEP_LIMIT else 1
        mode = event.get("parallel_mode")
        self.parallel_mode = name_text(mode, 20) if mode.__class__ is str and mode else None
        ranks = clean_ranks(event.get("ranks"))
        if ranks:
            self.ranks = ranks
        stages = clean_stages(as_dict(config.get("run")).get("stages"))
        if stages:
            self.stage_order = stages
        t = time_value(event.get("t"))
        if self.first_t is None and t is not None:
            self.first_t = t

    def _on_stage_start(self, event: dict) -> None:
        stage = self._event_stage(event, required=True)
        self.current_stage = stage.name
        total = number(event.get("total_steps"))
        stage.total_steps = int(total) if total is not None and 0 < total < 2 ** 53 else 0
        stage.model_info = as_dict(event.get("model"))
        stage.data_info = as_dict(event.get("data"))
        stage.state = "running"
        stage.facts.update(state="running", total_steps=stage.total_steps)

    def _on_stage_end(self, event: dict) -> None:
        stage = self._event_stage(event, required=True)
        state = event.get("state")
        stage.state = name_text(state, 20) if state.__class__ is str and state else "finished"
        path = event.get("final_path")
        stage.final_path = line_text(path, 300) if path is not None else None
        stage.facts["state"] = stage.state

    def _on_run_end(self, event: dict) -> None:
        state = event.get("state")
        self.end_state = name_text(state, 20) if state.__class__ is str else None
        error = event.get("error")
        self.error = line_text(error, ALERT_LIMIT) if error is not None else None

    def _on_batching(self, event: dict) -> None:
        stage_name = event.get("stage")
        batching = clean_batching(event)
        if stage_name.__class__ is str and stage_name:
            self._event_stage(event).batching = batching
            batching["stage"] = name_text(stage_name)
        self.batching = batching

    def _on_fp8(self, event: dict) -> None:
        layers = event.get("layers")
        if layers.__class__ is dict:
            self.fp8_last = clean_layers(layers)
            step = event.get("step")
            self.fp8_step = step_value(step) if step is not None else None
            self.fp8_events += 1

    def _on_samples(self, event: dict) -> None:
        samples = clean_samples(event.get("samples"))
        stage = event.get("stage")
        step = event.get("step")
        self.samples.append({"stage": name_text(stage) if stage.__class__ is str else None,
                             "step": step_value(step) if step is not None else None,
                             "t": time_value(event.get("t")), "samples": samples})
        self.samples_total += 1

    def _on_log(self, event: dict) -> None:
        level = event.get("level")
        stage = event.get("stage")
        self.logs_total += 1
        self.logs.append({"t": time_value(event.get("t")),
                          "level": name_text(level, 10).lower() if level.__class__ is str and level else "info",
                          "stage": name_text(stage) if stage.__class__ is str and stage else None,
                          "message": text_value(event.get("message", ""), LOG_LIMIT)})

    def _on_alert(self, event: dict) -> None:
        alert = clean_alert(event)
        self.alerts.append(alert)
        self.logs_total += 1
        self.logs.append({"t": alert["t"], "level": alert["level"], "stage": alert["stage"],
                          "message": f"ALERT {alert['code']}: {alert['message']}"})

    def _on_checkpoint(self, event: dict) -> None:
        self.checkpoints.append({"path": line_text(event.get("path"), 300), "step": number(event.get("step")),
                                 "reason": line_text(event.get("reason"), 40)})

    def _on_control(self, event: dict) -> None:
        cmd = event.get("cmd")
        self.last_control = name_text(cmd, 20) if cmd.__class__ is str else None

    _handlers = {
        "metrics": _on_metrics, "eval": _on_eval, "system": _on_system,
        "run_start": _on_run_start, "stage_start": _on_stage_start, "stage_end": _on_stage_end,
        "run_end": _on_run_end, "batching": _on_batching, "fp8": _on_fp8, "samples": _on_samples,
        "log": _on_log, "alert": _on_alert, "checkpoint": _on_checkpoint, "control": _on_control,
    }

    def ingest_log_lines(self, lines: list[str], source: str = "train.log") -> None:
        """Lines of `train.log` (the full human log: eval results and more than the events carry),
        or of `process.out` (what a detached launch printed, e.g. an error before training)."""
        with self.lock:
            tail = self.log_lines if source == "train.log" else self.out_lines
            for line in lines[-LOG_TAIL:]:
                text = text_value(line, LOG_LIMIT)
                tail.append({"level": log_level(text), "message": text, "raw": True})
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
        if step is None:
            step = stage.last_step if stage else 0
        if not total:
            total = stage.total_steps if stage else 0
        eta = status.get("eta_s")
        if eta is None and stage is not None:
            eta = number(stage.last_metrics.get("eta_s"))
        if self.state in ("finished", "failed", "stopped", "lost"):
            eta = None
        return step, total, eta

    def last_loss(self) -> float | None:
        stage = self.shown_stage()
        if stage is not None:
            value = number(stage.last_metrics.get("loss"))
            if value is not None:
                return value
        return number(((self.status or {}).get("last_metrics") or {}).get("loss"))

    def rl_metrics_present(self, stage: StageModel) -> bool:
        return any(k in stage.series for k in RL_METRICS)

    def pipeline(self) -> list[PipelineRow]:
        """The per-stage table of the eval tab (stage, state, steps, test_acc, best task_acc,
        pair_acc), in the run's stage order."""
        facts = {}
        for name, stage in self.stages.items():
            entry = dict(stage.facts)
            entry["step"] = stage.last_step
            facts[name] = entry
        return pipeline_rows(self.stage_order, facts, self.state)
