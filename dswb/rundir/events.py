"""`events.jsonl`: the append-only event stream of a run, and tolerant readers for it.

Each line is one JSON object with `t` (unix seconds), `kind`, `stage` and `step`; kind `metrics`
(and `eval`, `system`) carries `metrics: {name: number}`. Writers flush every line; readers
keep a byte offset, return only complete lines and leave a torn last line for the next read.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

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


class EventWriter:
    """Appends events to `events.jsonl`, one flushed line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", buffering=1, encoding="utf-8")

    def emit(self, kind: str, stage: str | None, step: int, **fields: Any) -> dict:
        event = {"t": round(time.time(), 3), "kind": kind, "stage": stage, "step": step}
        event.update(json_safe(fields))
        self._file.write(json.dumps(event, default=str, allow_nan=False) + "\n")
        self._file.flush()
        return event

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


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
            self.offset = 0
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(min(size - self.offset, max_bytes))
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        lines = data[:end].split(b"\n")
        return lines[1:] if skip_partial else lines

    def read_text(self, max_bytes: int = 1 << 20) -> list[str]:
        return [line.decode("utf-8", errors="replace") for line in self.read_lines(max_bytes)]


class EventTail(LineTail):
    """New complete events of a growing `events.jsonl` (see `LineTail` for what it tolerates)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        super().__init__(path, offset)
        self.bad_lines = 0

    def read_new(self, max_bytes: int = 64 << 20) -> list[dict]:
        lines = [line for line in self.read_lines(max_bytes) if line.strip()]
        if not lines:
            return []
        try:  # one parse for the whole chunk is ~2x faster than one per line
            events = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:
            events = self._parse_each(lines)
        return [e for e in events if isinstance(e, dict)]

    def _parse_each(self, lines: list[bytes]) -> list:
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                self.bad_lines += 1
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
