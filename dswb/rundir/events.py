"""`events.jsonl`: the append-only event stream of a run, and tolerant readers for it.

Each line is one JSON object with `t` (unix seconds), `kind`, `stage` and `step`; kind `metrics`
(and `eval`, `system`) carries `metrics: {name: number}`. Writers append each line with one
`write` (a line a full disk cut short is taken back, and `DiskFull` names the file); readers keep
a byte offset, return only complete lines and leave a torn last line for the next read.

Readers take anything: lines that are not JSON, binary, nesting too deep to parse and lines
over the read size are skipped and counted (`bad_lines`), JSON that is not an object is
skipped; every event they return has
the envelope's types (`t` a finite number or None, `kind` and `stage` a string or None, `step`
an int or None), `metrics` (when present) maps names to finite numbers or None, and strings
hold no lone surrogates (so they can always be printed). Huge strings are kept whole: viewers
cut them for display.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

from dswb.rundir.space import DISK_FULL_ERRNOS, DiskFull

EVENT_KINDS = ("run_start", "stage_start", "stage_end", "metrics", "eval", "system", "checkpoint",
               "alert", "log", "batching", "control", "run_end")


def json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf: replace them (at any depth) with null so output stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class AppendFile:
    """An append-only file written whole lines at a time, one `write` each (no buffering).

    If the disk fills in the middle of a line, the torn piece is cut off again (the file keeps
    only whole lines) and `DiskFull` names the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._size = os.fstat(self._fd).st_size

    @property
    def closed(self) -> bool:
        return self._fd is None

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            self._take_back(done)
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFull(self.path) from exc
            raise
        self._size += done

    def _take_back(self, written: int) -> None:
        try:
            if written and os.fstat(self._fd).st_size == self._size + written:  # nobody else appended
                os.ftruncate(self._fd, self._size)
        except OSError:
            pass

    def close(self, sync: bool = True) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)


class EventWriter:
    """Appends events to `events.jsonl`, one whole line per `write`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = AppendFile(path)

    def emit(self, kind: str, stage: str | None, step: int, **fields: Any) -> dict:
        event = {"t": round(time.time(), 3), "kind": kind, "stage": stage, "step": step}
        event.update(json_safe(fields))
        self._file.write((json.dumps(event, default=str, allow_nan=False) + "\n").encode("utf-8"))
        return event

    def close(self) -> None:
        self._file.close()


# --- reading ---------------------------------------------------------------------------------

MAX_INT = 2 ** 63  # steps, counters: beyond this an int is not a count any writer produced


def clean_number(value: Any) -> int | float | None:
    """A finite int or float, else None (bools, strings, NaN/Inf, ints beyond float range)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        if -MAX_INT < value < MAX_INT:
            return value
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def clean_metrics(metrics: dict) -> dict:
    """`{name: finite number or None}`; values of other types are dropped."""
    for value in metrics.values():  # fast path: already clean (what the engine writes)
        kind = type(value)
        if kind is float:
            if value - value != 0.0:   # NaN or Inf
                break
        elif kind is not int or not -MAX_INT < value < MAX_INT:
            if value is not None:
                break
    else:
        return metrics
    out = {}
    for name, value in metrics.items():
        if value is None:
            out[name] = None
        elif isinstance(value, (int, float)):
            out[name] = clean_number(value)
    return out


def clean_step(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -MAX_INT < value < MAX_INT else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < MAX_INT:
        return int(value)
    return None


def printable(value: Any) -> Any:
    """`value` with lone surrogates (from `\\udXXX` escapes) replaced in every string, at any depth."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def clean_event(event: Any) -> dict | None:
    """The event with its envelope and metrics coerced to their types; None if not an object."""
    if not isinstance(event, dict):
        return None
    t = event.get("t")
    if t is not None and clean_number(t) is None:
        event["t"] = None
    for key in ("kind", "stage"):
        value = event.get(key)
        if value is not None and not isinstance(value, str):
            event[key] = None
    step = event.get("step")
    if step is not None and not (type(step) is int and -MAX_INT < step < MAX_INT):
        event["step"] = clean_step(step)
    if "metrics" in event:
        metrics = event["metrics"]
        if isinstance(metrics, dict):
            event["metrics"] = clean_metrics(metrics)
        else:
            del event["metrics"]
    return event


def _has_surrogate_escape(data: bytes) -> bool:
    return b"\\ud" in data or b"\\uD" in data


class LineTail:
    """New complete lines of a growing file, from a remembered byte offset.

    Tolerates a file that does not exist yet and a torn (partial) last line, which waits for
    its newline; if the file is replaced by a shorter one, reading starts again from the top.
    With `tail_bytes`, the first read of a large file starts that far before its end (for logs,
    of which only a tail is shown) and drops the partial first line.
    """

    def __init__(self, path: Path, offset: int = 0, tail_bytes: int | None = None) -> None:
        self.path = path
        self.offset = offset
        self.tail_bytes = tail_bytes
        self.long_lines = 0        # lines longer than one read, skipped
        self._in_long_line = False

    def read_lines(self, max_bytes: int = 64 << 20) -> list[bytes]:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return []
        skip_partial = False
        if self.tail_bytes is not None:
            self.offset = max(self.offset, size - self.tail_bytes)
            skip_partial = self.offset > 0
            self.tail_bytes = None
        if size < self.offset:
            self.offset, self._in_long_line = 0, False
        if size == self.offset:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(min(size - self.offset, max_bytes))
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= max_bytes:  # a line longer than a whole read: skip it, don't stall on it
                self.offset += len(data)
                if not self._in_long_line:
                    self.long_lines += 1
                self._in_long_line = True
            return []
        self.offset += end + 1
        lines = data[:end].split(b"\n")
        if self._in_long_line:  # the rest of a skipped long line
            self._in_long_line = False
            lines = lines[1:]
        return lines[1:] if skip_partial else lines

    def read_text(self, max_bytes: int = 1 << 20) -> list[str]:
        return [line.decode("utf-8", errors="replace") for line in self.read_lines(max_bytes)]


class EventTail(LineTail):
    """New complete events of a growing `events.jsonl` (see `LineTail` for what it tolerates)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        super().__init__(path, offset)
        self._bad = 0

    @property
    def bad_lines(self) -> int:
        """Lines skipped so far: not JSON (or nested too deep to parse), or longer than one read."""
        return self._bad + self.long_lines

    def read_new(self, max_bytes: int = 64 << 20) -> list[dict]:
        lines = [line for line in self.read_lines(max_bytes) if line.strip()]
        if not lines:
            return []
        chunk = b"[" + b",".join(lines) + b"]"
        try:  # one parse for the whole chunk is ~2x faster than one per line
            events = json.loads(chunk)
        except (ValueError, RecursionError):
            events = self._parse_each(lines)
        fix_strings = _has_surrogate_escape(chunk)
        out = []
        for event in events:
            if fix_strings:
                try:
                    event = printable(event)
                except RecursionError:
                    event = None
            event = clean_event(event)
            if event is not None:   # valid JSON that is not an object is dropped (not counted)
                out.append(event)
        return out

    def _parse_each(self, lines: list[bytes]) -> list:
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except (ValueError, RecursionError):
                self._bad += 1
        return events

    def __iter__(self) -> Iterator[dict]:
        while True:
            batch = self.read_new()
            if not batch:
                return
            yield from batch


def read_events(path: Path, kinds: tuple[str, ...] | None = None) -> list[dict]:
    """All complete events in the file (a torn last line is ignored), optionally by kind."""
    events = list(EventTail(path))
    if kinds:
        events = [e for e in events if e.get("kind") in kinds]
    return events
