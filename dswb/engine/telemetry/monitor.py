"""The run's monitor: one interface, several sinks.

Every metric, event and state change goes through `Monitor`, which writes `events.jsonl`,
keeps `status.json` current (atomically, throttled), appends `train.log`, updates the
streaming statistics, and forwards to an optional console reporter (progress bar or plain
lines). Later stages and components (RL health checks, FP8 statistics) add metrics through the
same `metrics()` call. In a distributed run (`ranks`, see `dswb.engine.distributed.ranks`) every rank
calls the same methods: metrics are reduced over the ranks before rank 0 writes them, evaluation
metrics become rank 0's on every rank (in place, so every rank takes the same decisions), and
`system` events list every rank's device; the other ranks' monitors write only their own log.

A full disk in any sink raises `DiskFull` naming the file (the events file and the log keep only
whole lines). `finish()` writes the final state best-effort: whatever can still be written is.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from dswb.engine.telemetry.sinks.pump import SinkPump, SinkTee
from dswb.rundir.events import AppendFile, EventWriter
from dswb.rundir.layout import RunPaths
from dswb.rundir.status import write_status
from dswb.stats import StatsBook


class Reporter(Protocol):
    """What a console front end implements (see `dswb.cli.progress`)."""

    def on_stage_start(self, stage: str, total_steps: int, start_step: int) -> None: ...
    def on_metrics(self, stage: str, step: int, total_steps: int, metrics: dict, eta_s: float | None) -> None: ...
    def on_event(self, event: dict) -> None: ...
    def on_stage_end(self, stage: str, state: str) -> None: ...


class Monitor:
    STATUS_EVERY_S = 0.5
    sinks: SinkPump | None = None   # tracker sinks ([monitor] report_to), rank 0 only: see attach_sinks

    def __init__(self, paths: RunPaths, status: dict, ema: float = 0.9, reporter: Reporter | None = None,
                 ranks: Any = None) -> None:
        self.paths = paths
        self.ranks = ranks          # a RankSync in a distributed run, else None
        self.status = status
        self.stats = StatsBook(ema)
        self.reporter = reporter
        self.events = EventWriter(paths.events)
        self._log = AppendFile(paths.log)
        self._last_status_write = 0.0
        self._alerted: dict[tuple[str, str | None], Any] = {}
        self.write_status(force=True)

    # -- sinks ---------------------------------------------------------------------------
    def attach_sinks(self, pump: SinkPump) -> None:
        """Put every event written from now on also on `pump` (its failures come back as alerts, where each sink
        writes as a log line)."""
        self.sinks = pump
        pump.alert = self.alert
        pump.log = self.log
        self.events = SinkTee(self.events, pump)

    def write_status(self, force: bool = False, **fields: Any) -> None:
        self.status.update(fields)
        now = time.monotonic()
        if force or now - self._last_status_write >= self.STATUS_EVERY_S:
            write_status(self.paths.status, self.status)
            self._last_status_write = now

    def log(self, message: str, level: str = "info", stage: str | None = None, step: int = 0,
            event: bool = True) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        where = f"[{stage}] " if stage else ""
        self._log.write(f"{stamp} {level.upper():7s} {where}{message}\n".encode("utf-8", "replace"))
        if event:
            self.emit("log", stage, step, level=level, message=message)

    def emit(self, kind: str, stage: str | None, step: int, **fields: Any) -> dict:
        event = self.events.emit(kind, stage, step, **fields)
        if self.reporter is not None:
            self.reporter.on_event(event)
        return event

    # -- typed helpers -----------------------------------------------------------------
    def metrics(self, stage: str, step: int, total_steps: int, metrics: dict[str, float],
                eta_s: float | None) -> None:
        if self.ranks is not None:
            metrics = self.ranks.reduce(metrics)
        if eta_s is not None:
            metrics = {**metrics, "eta_s": eta_s}
        self.stats.update(metrics)
        self.events.emit("metrics", stage, step, metrics=metrics)
        self.write_status(step=step, eta_s=eta_s, last_metrics=metrics)
        if self.reporter is not None:
            self.reporter.on_metrics(stage, step, total_steps, metrics, eta_s)

    def eval(self, stage: str, step: int, metrics: dict[str, float], **fields: Any) -> None:
        """Record an evaluation; one that measured nothing (an RL stage on files) leaves no trace.
        `fields` go into the event as they are (lm-eval's `source`)."""
        if self.ranks is not None:
            agreed = self.ranks.agree(metrics)
            if agreed is not metrics:
                metrics.clear()
                metrics.update(agreed)
        if not metrics:   # after the agreement: every rank takes part in it
            return
        self.stats.update(metrics)
        self.emit("eval", stage, step, metrics=metrics, **fields)
        self.status["last_eval"] = metrics
        parts = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        self.log(f"step {step} eval {parts}", stage=stage, event=False)

    def system(self, stage: str | None, step: int, metrics: dict[str, float]) -> None:
        if metrics:
            self.stats.update(metrics)
            extra = {} if self.ranks is None else {"ranks": self.ranks.system_ranks(metrics)}
            self.events.emit("system", stage, step, metrics=metrics, **extra)

    def alert(self, stage: str, step: int, code: str, message: str, explain: str, level: str = "warning") -> None:
        self.log(f"ALERT {code}: {message}", level=level, stage=stage, event=False)
        self.emit("alert", stage, step, level=level, code=code, message=message, explain=explain)

    def alert_on_change(self, stage: str, step: int, code: str, message: str, explain: str,
                        level: str = "warning", value: Any = None) -> None:
        """An alert for a condition that persists (e.g. low disk space): raised again only when
        `value` changes, not at every check."""
        if self._alerted.get((code, stage), object()) != value:
            self._alerted[(code, stage)] = value
            self.alert(stage, step, code, message, explain, level=level)

    def forget_alert(self, code: str, stage: str | None) -> None:
        self._alerted.pop((code, stage), None)

    def finish(self, state: str, error: str | None, ended: float) -> list[str]:
        """Record the run's end in every sink that can still be written; returns the sinks that
        could not (a full disk), after which viewers read the state as `lost`."""
        failed = []
        stage, step = self.status.get("stage"), self.status.get("step", 0)
        steps = [
            ("train.log", lambda: error and self.log(f"error: {error}", level="error", stage=stage, event=False)),
            ("status.json", lambda: self.write_status(force=True, state=state, error=error, ended=ended)),
            ("events.jsonl", lambda: error and self.emit("log", stage, step, level="error", message=f"error: {error}")),
            ("events.jsonl", lambda: self.sinks is not None and self.sinks.flush()),   # sink_failed alerts
            ("events.jsonl", lambda: self.emit("run_end", None, self.status.get("step", 0), state=state, error=error)),
        ]
        for name, write in steps:
            try:
                write()
            except OSError:   # DiskFull included
                failed.append(name)
        self.close()
        return failed

    def close(self) -> None:
        if self.sinks is not None:
            self.sinks.close()
        for sink in (self.events, self._log):
            try:
                sink.close()
            except OSError:
                pass
