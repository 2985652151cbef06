"""Background readers of the run directories: they post messages, never touch widgets.

`RunFollower` is one thread per watched run. It reads new complete lines of `events.jsonl`
from a remembered byte offset (`EventTail`: a file that does not exist yet or a torn last line
is fine), folds them into its `RunModel`, re-reads `status.json` when it changed on disk, and
posts `RunUpdated`. A message is posted only when none is waiting (the app calls
`acknowledge()` before it reads the model), so a fast writer cannot flood the UI: a newer
update replaces a waiting one. When nothing is written it polls less and less often (up to
`max_interval`), and it survives anything a file holds (a read that fails is reported once
through `error` and retried).

`RunsScanner` does the same for the runs list: it scans the runs root every second while the
list is shown (`active`), every few seconds otherwise, re-reading only status files that changed.
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
from dswb.tui.sanitize import clean_status, number

Post = Callable[[object], object]

# One read of events.jsonl: a line longer than this is skipped by the reader (and counted as
# bad); anything shorter is shown, long text cut with a marker. The model takes a read in
# batches of INGEST_BATCH events, so the screen never waits long for its lock.
CHUNK_BYTES = 16 << 20
INGEST_BATCH = 2000
LOG_TAIL_BYTES = 256 << 10  # only the end of a long train.log is ever shown


class RunFollower(threading.Thread):
    """Follows one run directory; `model` is always the newest folded state."""

    def __init__(self, paths: RunPaths, post: Post, interval: float = 0.25,
                 chunk_bytes: int = CHUNK_BYTES, model: RunModel | None = None,
                 max_interval: float | None = None) -> None:
        super().__init__(name=f"follow-{paths.run_id}", daemon=True)
        self.paths = paths
        self.post = post
        self.interval = interval
        self.max_interval = max_interval if max_interval is not None else backoff_limit(interval)
        self.chunk_bytes = chunk_bytes
        self.model = model or RunModel(paths)
        self.tail = EventTail(paths.events)
        self.log_tail = LineTail(paths.log, tail_bytes=LOG_TAIL_BYTES)
        self.out_tail = LineTail(paths.stdout, tail_bytes=LOG_TAIL_BYTES)  # a detached launch's own output (errors before train.log)
        self.caught_up = threading.Event()  # set when a poll found nothing new to read
        self._pending = threading.Event()  # a RunUpdated is waiting in the app's queue
        self._stop_event = threading.Event()
        self._status_key: tuple | None = None
        self._status: object = None
        self.error: BaseException | None = None  # the last read that failed (reading goes on)
        self.polls = 0

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
    def read_status(self) -> object:
        """`status.json`, parsed again only when its inode, size or mtime changed."""
        try:
            st = os.stat(self.paths.status)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        if key != self._status_key or key is None:
            self._status_key = key
            self._status = read_status(self.paths.status) if key is not None else None
        return self._status

    def poll_once(self) -> tuple[bool, bool]:
        """Read what is new. Returns (changed, more_to_read)."""
        self.polls += 1
        events = self.tail.read_new(self.chunk_bytes)
        for i in range(0, len(events), INGEST_BATCH):
            self.model.ingest(events[i:i + INGEST_BATCH])
        lines = self.log_tail.read_text()
        if lines:
            self.model.ingest_log_lines(lines)
        out = self.out_tail.read_text()
        if out:
            self.model.ingest_log_lines(out, source="process.out")
            lines = lines + out
        self.model.bad_lines = self.tail.bad_lines + self.model.bad_events
        status_changed = self.model.set_status(self.read_status())
        return bool(events) or bool(lines) or status_changed, bool(events) or bool(lines)

    def notify(self) -> None:
        if not self._pending.is_set():
            self._pending.set()
            self.post(RunUpdated(self))

    def poll_safely(self) -> tuple[bool, bool]:
        """`poll_once`, but a read that fails is kept in `error` (changed when it is a new one)
        instead of ending the thread: the next poll reads on from where the reader got to."""
        try:
            return self.poll_once()
        except Exception as exc:  # noqa: BLE001 - shown once by the screen; the next poll tries again
            changed = self.error is None or repr(exc) != repr(self.error)
            self.error = exc
            return changed, False

    def run(self) -> None:
        first = True
        wait = self.interval
        while not self._stop_event.is_set():
            changed, more = self.poll_safely()
            if changed or first:
                self.notify()
            first = False
            if more:
                self.caught_up.clear()
                wait = self.interval
                continue
            self.caught_up.set()
            self._stop_event.wait(wait)
            wait = self.interval if changed else min(self.max_interval, wait * 2)


def backoff_limit(interval: float) -> float:
    """The longest wait between polls of a quiet run: 8 times the base, at most 2 s."""
    return max(interval, min(2.0, 8 * interval))


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


def scan_runs(runs_root: Path, cache: dict | None = None) -> list[RunRow]:
    """A row per run under `runs_root`, newest first. With `cache` (a dict kept by the caller),
    a status file is parsed again only when its inode, size or mtime changed."""
    rows = []
    for paths in find_runs(runs_root):
        status = _cached_status(paths.status, cache) if cache is not None else clean_status(read_status(paths.status))
        status = status or {}
        loss = number((status.get("last_metrics") or {}).get("loss"))
        rows.append(RunRow(
            paths=paths, state=effective_state(status or None), stage=status.get("stage") or "-",
            step=status.get("step") or 0, total_steps=status.get("total_steps") or 0, loss=loss,
            updated=status.get("updated"), error=status.get("error")))
    return rows


def _cached_status(path: Path, cache: dict) -> dict | None:
    try:
        st = os.stat(path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        cache.pop(path, None)
        return None
    hit = cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    status = clean_status(read_status(path))
    cache[path] = (key, status)
    return status


class RunsScanner(threading.Thread):
    """Re-reads the runs root every `interval` seconds while `active` (the runs list is shown),
    every `idle_factor` times that otherwise, and posts `RunsScanned` on change."""

    def __init__(self, runs_root: Path, post: Post, interval: float = 1.0, idle_factor: float = 5.0) -> None:
        super().__init__(name="scan-runs", daemon=True)
        self.runs_root = Path(runs_root)
        self.post = post
        self.interval = interval
        self.idle_factor = idle_factor
        self.active = True
        self.scanned = threading.Event()
        self._rows: list[RunRow] = []
        self._lock = threading.Lock()
        self._pending = threading.Event()
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._cache: dict = {}

    def latest(self) -> list[RunRow]:
        """The newest rows; call before reading so a later change posts again."""
        self._pending.clear()
        with self._lock:
            return list(self._rows)

    def rescan(self) -> None:
        """Scan now instead of at the next tick (after a launch, for instance)."""
        self._wake.set()

    def set_active(self, active: bool) -> None:
        """The runs list is shown (scan every `interval`) or not (scan less often)."""
        if active and not self.active:
            self._wake.set()
        self.active = active

    def stop(self, timeout: float | None = 2.0) -> None:
        self._stop_event.set()
        self._wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        previous: list[RunRow] | None = None
        while not self._stop_event.is_set():
            try:
                rows = scan_runs(self.runs_root, self._cache)
            except Exception:  # noqa: BLE001 - an unreadable root keeps the last rows; try again later
                rows = previous or []
            if rows != previous:
                with self._lock:
                    self._rows = rows
                previous = rows
                if not self._pending.is_set():
                    self._pending.set()
                    self.post(RunsScanned(self))
            self.scanned.set()
            self._wake.wait(self.interval if self.active else self.interval * self.idle_factor)
            self._wake.clear()


def ingest_rate(path: Path, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, float, RunModel]:
    """Fold a whole events file the way the follower does; (events, seconds, model)."""
    follower = RunFollower(RunPaths(path.parent), post=lambda message: None, chunk_bytes=chunk_bytes)
    start = time.perf_counter()
    while True:
        _, more = follower.poll_once()
        if not more:
            break
    return follower.model.events, time.perf_counter() - start, follower.model
