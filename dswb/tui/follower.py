"""Background readers of the run directories: they post messages, never touch widgets.

`RunFollower` is one thread per watched run. It reads new complete lines of `events.jsonl`
from a remembered byte offset (`EventTail`: a file that does not exist yet or a torn last line
is fine), folds them into its `RunModel`, re-reads `status.json`, and posts `RunUpdated`.
A message is posted only when none is waiting (the app calls `acknowledge()` before it reads
the model), so a fast writer cannot flood the UI: a newer update replaces a waiting one.

`RunsScanner` does the same for the runs list: it scans the runs root every second.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dswb.rundir import EventTail, RunPaths, effective_state, find_runs, read_status
from dswb.rundir.events import LineTail
from dswb.tui.messages import RunsScanned, RunUpdated
from dswb.tui.model import RunModel

Post = Callable[[object], object]

CHUNK_BYTES = 1 << 20  # events read per model update: keeps each lock hold short
LOG_TAIL_BYTES = 256 << 10  # only the end of a long train.log is ever shown


class RunFollower(threading.Thread):
    """Follows one run directory; `model` is always the newest folded state."""

    def __init__(self, paths: RunPaths, post: Post, interval: float = 0.25,
                 chunk_bytes: int = CHUNK_BYTES, model: RunModel | None = None) -> None:
        super().__init__(name=f"follow-{paths.run_id}", daemon=True)
        self.paths = paths
        self.post = post
        self.interval = interval
        self.chunk_bytes = chunk_bytes
        self.model = model or RunModel(paths)
        self.tail = EventTail(paths.events)
        self.log_tail = LineTail(paths.log, tail_bytes=LOG_TAIL_BYTES)
        self.out_tail = LineTail(paths.stdout, tail_bytes=LOG_TAIL_BYTES)  # a detached launch's own output (errors before train.log)
        self.caught_up = threading.Event()  # set when a poll found nothing new to read
        self._pending = threading.Event()  # a RunUpdated is waiting in the app's queue
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    # -- called from the app ---------------------------------------------------------------
    def acknowledge(self) -> None:
        """The app is about to read the model: a later change must post a new message."""
        self._pending.clear()

    @property
    def pending(self) -> bool:
        return self._pending.is_set()

    def stop(self, timeout: float | None = 2.0) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    # -- the thread ------------------------------------------------------------------------
    def poll_once(self) -> tuple[bool, bool]:
        """Read what is new. Returns (changed, more_to_read)."""
        events = self.tail.read_new(self.chunk_bytes)
        if events:
            self.model.ingest(events)
        lines = self.log_tail.read_text()
        if lines:
            self.model.ingest_log_lines(lines)
        out = self.out_tail.read_text()
        if out:
            self.model.ingest_log_lines(out, source="process.out")
            lines = lines + out
        self.model.bad_lines = self.tail.bad_lines
        status_changed = self.model.set_status(read_status(self.paths.status))
        return bool(events) or bool(lines) or status_changed, bool(events) or bool(lines)

    def notify(self) -> None:
        if not self._pending.is_set():
            self._pending.set()
            self.post(RunUpdated(self))

    def run(self) -> None:
        try:
            first = True
            while not self._stop_event.is_set():
                changed, more = self.poll_once()
                if changed or first:
                    self.notify()
                first = False
                if more:
                    self.caught_up.clear()
                    continue
                self.caught_up.set()
                self._stop_event.wait(self.interval)
        except BaseException as exc:  # reported by the app; the thread must not die silently
            self.error = exc
            self.caught_up.set()
            self.notify()


@dataclass(frozen=True)
class RunRow:
    """One line of the runs list."""

    paths: RunPaths
    state: str
    stage: str
    step: int
    total_steps: int
    loss: float | None
    updated: float | None
    error: str | None

    @property
    def run_id(self) -> str:
        return self.paths.run_id


def scan_runs(runs_root: Path) -> list[RunRow]:
    """A row per run under `runs_root`, newest first."""
    rows = []
    for paths in find_runs(runs_root):
        status = read_status(paths.status) or {}
        loss = (status.get("last_metrics") or {}).get("loss")
        step, total = status.get("step"), status.get("total_steps")
        rows.append(RunRow(
            paths=paths, state=effective_state(status or None), stage=str(status.get("stage") or "-"),
            step=step if isinstance(step, int) else 0, total_steps=total if isinstance(total, int) else 0,
            loss=loss if isinstance(loss, (int, float)) else None,
            updated=status.get("updated") if isinstance(status.get("updated"), (int, float)) else None,
            error=status.get("error")))
    return rows


class RunsScanner(threading.Thread):
    """Re-reads the runs root every `interval` seconds and posts `RunsScanned` on change."""

    def __init__(self, runs_root: Path, post: Post, interval: float = 1.0) -> None:
        super().__init__(name="scan-runs", daemon=True)
        self.runs_root = Path(runs_root)
        self.post = post
        self.interval = interval
        self.scanned = threading.Event()
        self._rows: list[RunRow] = []
        self._lock = threading.Lock()
        self._pending = threading.Event()
        self._stop_event = threading.Event()
        self._wake = threading.Event()

    def latest(self) -> list[RunRow]:
        """The newest rows; call before reading so a later change posts again."""
        self._pending.clear()
        with self._lock:
            return list(self._rows)

    def rescan(self) -> None:
        """Scan now instead of at the next tick (after a launch, for instance)."""
        self._wake.set()

    def stop(self, timeout: float | None = 2.0) -> None:
        self._stop_event.set()
        self._wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        previous: list[RunRow] | None = None
        while not self._stop_event.is_set():
            try:
                rows = scan_runs(self.runs_root)
            except OSError:
                rows = previous or []
            if rows != previous:
                with self._lock:
                    self._rows = rows
                previous = rows
                if not self._pending.is_set():
                    self._pending.set()
                    self.post(RunsScanned(self))
            self.scanned.set()
            self._wake.wait(self.interval)
            self._wake.clear()


def file_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def ingest_rate(path: Path, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, float, RunModel]:
    """Fold a whole events file the way the follower does; (events, seconds, model)."""
    follower = RunFollower(RunPaths(path.parent), post=lambda message: None, chunk_bytes=chunk_bytes)
    start = time.perf_counter()
    while True:
        _, more = follower.poll_once()
        if not more:
            break
    return follower.model.events, time.perf_counter() - start, follower.model
