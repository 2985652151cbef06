"""`SinkPump`: the run's events to every tracker sink, off the training thread.

The training thread only `put`s each event on a bounded queue (a full queue drops the event and
counts it in `dropped`: training never waits for a tracker); one daemon thread opens the sinks
(their imports included) and writes every event to each. A sink that raises anywhere (a missing
library, a full disk, a server that went away) is closed and switched off, and the training thread
reports it as ONE `alert` event (`sink_failed`, naming the sink and the one-line error) at its next
`put` or `flush`; `events.jsonl` is written before the pump sees an event and stays complete. Where
each sink opened its store (and its `note`, e.g. W&B offline not resuming) comes back the same way,
as one log line.

`SinkTee` wraps the monitor's events writer so that every event written is also put on the pump.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable

from dswb.engine.telemetry.sinks.base import Sink

QUEUE_SIZE = 10_000
FLUSH_TIMEOUT_S = 60.0
EXPLAIN = ("A tracker sink ([monitor] report_to) raised, so it was switched off for the rest of this run; "
           "training and events.jsonl are unaffected. Fix the cause and fill the tracker afterwards with "
           "`dswb runs export RUN --to NAME`.")

Alert = Callable[..., Any]   # Monitor.alert(stage, step, code, message, explain, level=...)
Log = Callable[..., Any]     # Monitor.log(message, stage=..., step=...)


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


class SinkPump:
    def __init__(self, sinks: list[Sink], run_dir: Path, config: dict, alert: Alert | None = None,
                 queue_size: int = QUEUE_SIZE, log: Log | None = None) -> None:
        self.sinks = list(sinks)
        self.alert = alert
        self.log = log
        self.dropped = 0
        self.failed: list[str] = []
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._failures: deque[tuple[str, str]] = deque()
        self._notes: deque[str] = deque()     # "<sink>: writing to <where>[; <note>]", for `log`
        self._where = (None, 0)           # (stage, step) of the last event put, for the alerts
        self._closed = False
        self._thread = threading.Thread(target=self._loop, args=(Path(run_dir), config), name="dswb-sinks",
                                        daemon=True)
        self._thread.start()

    # -- training thread -----------------------------------------------------------------
    def put(self, event: dict) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
        self._where = (event.get("stage"), event.get("step") or 0)
        if self._failures or self._notes:
            self.report_pending()

    def report_pending(self) -> None:
        """Each sink's opening as one log line, each sink failure so far as one `sink_failed` alert
        (through `log` and `alert`, on this thread)."""
        while self._notes:
            note = self._notes.popleft()
            if self.log is not None:
                stage, step = self._where
                self.log(note, stage=stage, step=step)
        while self._failures:
            name, error = self._failures.popleft()
            if self.alert is not None:
                stage, step = self._where
                self.alert(stage, step, "sink_failed", f"sink {name} switched off: {error}", EXPLAIN)

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every event put so far is written (or `timeout`), then report failures."""
        done = threading.Event()
        ok = False
        if self._thread.is_alive():
            try:
                self._queue.put(done, timeout=timeout)
                ok = done.wait(timeout)
            except queue.Full:
                pass
        self.report_pending()
        return ok

    def close(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Write what is queued, close every sink, stop the thread; later `put`s are ignored."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        self.report_pending()

    # -- sink thread ---------------------------------------------------------------------
    def _loop(self, run_dir: Path, config: dict) -> None:
        live = [s for s in self.sinks if self._call(s, s.open, run_dir, config)]
        for sink in live:
            self._notes.append(f"{sink.name}: writing to {sink.where}" + (f"; {sink.note}" if sink.note else ""))
        while True:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, threading.Event):
                item.set()
                continue
            live = [s for s in live if self._call(s, s.write, item)]
        for sink in live:
            self._call(sink, sink.close)

    def _call(self, sink: Sink, method: Callable, *args: Any) -> bool:
        try:
            method(*args)
            return True
        except BaseException as exc:   # anything a tracker raises switches it off, never the run
            self.failed.append(sink.name)
            self._failures.append((sink.name, one_line(exc)))
            if method != sink.close:
                try:
                    sink.close()
                except BaseException:
                    pass
            return False


class SinkTee:
    """An events writer that also puts every event it writes on `pump` (the monitor's `events`)."""

    def __init__(self, writer: Any, pump: SinkPump) -> None:
        self.writer = writer
        self.pump = pump
        self.path = getattr(writer, "path", None)

    def emit(self, kind: str, stage: str | None, step: int, **fields: Any) -> dict:
        event = self.writer.emit(kind, stage, step, **fields)
        self.pump.put(event)
        return event

    def close(self) -> None:
        self.writer.close()
