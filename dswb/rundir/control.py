"""The control channel: viewers ask a run to stop, pause, resume or checkpoint now.

A viewer appends one JSON line to `control.jsonl` inside the run directory; the training process
polls it once per step from a remembered offset. The run directory is created 0700, so only the
run's owner can write commands.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dswb.errors import UserError
from dswb.rundir.events import EventTail

COMMANDS = ("stop", "pause", "resume", "checkpoint")


def send_command(run_root: Path, command: str) -> None:
    if command not in COMMANDS:
        raise UserError(f"unknown control command '{command}' (choose from {', '.join(COMMANDS)})")
    path = run_root / "control.jsonl"
    if not run_root.is_dir():
        raise UserError(f"run directory {run_root} does not exist")
    line = json.dumps({"t": time.time(), "cmd": command, "pid": os.getpid()}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class ControlReader:
    """Returns commands appended since the last poll (cheap: one stat when nothing is new)."""

    def __init__(self, run_root: Path) -> None:
        path = run_root / "control.jsonl"
        # Commands written before this process started (e.g. a stop for an earlier attempt)
        # must not stop a resumed run.
        start = path.stat().st_size if path.exists() else 0
        self._tail = EventTail(path, offset=start)

    def poll(self) -> list[str]:
        return [e["cmd"] for e in self._tail.read_new() if e.get("cmd") in COMMANDS]
