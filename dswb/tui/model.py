"""What the dashboard knows about one run, built from its events and `status.json`.

`RunModel.ingest(events)` folds events (see docs/run-directory.md) into per-stage metric
histories with their streaming statistics (`SeriesHistory`), the latest system sample,
batching, FP8 and MoE routing snapshots, the latest RL samples, and bounded tails of logs, alerts and
checkpoints. The follower thread writes a model under its `lock`; the UI reads it under the
same lock. No Textual here.

This module holds the model's state, the batch loop and what the UI reads. How each kind of
event folds in lives beside it: `model_stage` (stages, metrics, eval, batching), `model_run`
(run start and end, checkpoints, control), `model_system` (system samples, distributed world),
`model_logs`, `model_fp8`, `model_moe` (Mixture-of-Experts routing, per stage) and `model_rl`
(samples); `model_points` batches metric points.

A viewer never dies from data: every field is checked as it comes in (`dswb.tui.sanitize`),
so the model holds only what the widgets can show: finite or missing numbers, short printable
strings, bounded collections. An event that cannot be used at all counts as a bad line.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from dswb.rundir import RunPaths, effective_state
from dswb.rundir.pipeline import PipelineRow, pipeline_rows
from dswb.tui.history import SeriesHistory
from dswb.tui.model_fp8 import on_fp8
from dswb.tui.model_logs import ALERT_TAIL, LOG_TAIL, append_log_lines, on_alert, on_log
from dswb.tui.model_moe import MoeStage, on_moe
from dswb.tui.model_points import PendingPoints
from dswb.tui.model_rl import SAMPLES_TAIL, has_rl_metrics, on_samples
from dswb.tui.model_run import on_checkpoint, on_control, on_run_end, on_run_start
from dswb.tui.model_stage import StageModel, on_batching, on_eval, on_metrics, on_stage_end, on_stage_start
from dswb.tui.model_system import on_system, world_label
from dswb.tui.sanitize import MAX_STAGES, clean_status, number, time_value

HISTORY_CAPACITY = 4096
# Each kind of event, and the function that folds it into a `RunModel`.
HANDLERS = {
    "metrics": on_metrics, "eval": on_eval, "system": on_system,
    "run_start": on_run_start, "stage_start": on_stage_start, "stage_end": on_stage_end,
    "run_end": on_run_end, "batching": on_batching, "fp8": on_fp8, "moe": on_moe, "samples": on_samples,
    "log": on_log, "alert": on_alert, "checkpoint": on_checkpoint, "control": on_control,
}


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
        self.moe: dict[str, MoeStage] = {}  # `moe` events (routing statistics) by stage name
        self.moe_events = 0
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
        self.pending = PendingPoints(history_capacity)  # metric points of the batch being ingested

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

    def ingest(self, events: list) -> None:
        """Fold a batch of events into the model (one lock acquisition per batch)."""
        if not events:
            return
        with self.lock:
            handlers = HANDLERS
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
            self.pending.flush()
            self.events += len(events)
            if last_t is not None:
                if self.first_t is None:
                    self.first_t = first_t
                self.last_t = last_t
            self.version += 1

    def ingest_log_lines(self, lines: list[str], source: str = "train.log") -> None:
        """Lines of `train.log` (the full human log: eval results and more than the events carry),
        or of `process.out` (what a detached launch printed, e.g. an error before training)."""
        with self.lock:
            append_log_lines(self, lines, source)
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

    def world_text(self) -> str:
        """`2 x ddp` for a distributed run, else empty."""
        return world_label(self.world_size, self.parallel_mode)

    def rl_metrics_present(self, stage: StageModel) -> bool:
        return has_rl_metrics(stage)

    def pipeline(self) -> list[PipelineRow]:
        """The per-stage table of the eval tab (stage, state, steps, test_acc, best task_acc,
        pair_acc), in the run's stage order."""
        facts = {}
        for name, stage in self.stages.items():
            entry = dict(stage.facts)
            entry["step"] = stage.last_step
            facts[name] = entry
        return pipeline_rows(self.stage_order, facts, self.state)
