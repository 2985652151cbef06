"""`status.json`: the run's current state, replaced atomically so readers never see half a file.

`read_status` takes anything: a missing, empty, truncated, oversized or non-JSON file reads as
None; known fields of the wrong type read as None (`state` as `unknown`). `effective_state` is
what every viewer shows: `lost` for a live-looking run whose process is gone (or whose pid now
belongs to another process). `write_status` raises `DiskFull` naming the file when the disk is full
(the previous status.json stays whole).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from dswb.rundir.events import (_has_surrogate_escape, clean_metrics, clean_number, clean_step, json_safe,
                                printable)
from dswb.rundir.space import DISK_FULL_ERRNOS, DiskFull
from dswb.util.atomic import write_json_atomic

STATES = ("starting", "running", "paused", "finished", "failed", "stopped")
LIVE_STATES = ("starting", "running", "paused")
MAX_STATUS_BYTES = 16 << 20   # a status.json bigger than this is not one the engine wrote
MAX_PID = 2 ** 31 - 1


def write_status(path: Path, status: dict) -> None:
    """Write `status` to `path` via a temporary file (`.status-*.tmp`, not fsynced) and
    `os.replace` (atomic on POSIX)."""
    status = json_safe({**status, "updated": time.time()})
    try:
        write_json_atomic(path, status, fsync=False, prefix=".status-", indent=1, allow_nan=False, default=str)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFull(path) from exc
        raise


def clean_status(status: dict) -> dict:
    """Known fields coerced to their types (None when they do not fit); other fields kept."""
    state = status.get("state")
    status["state"] = state if isinstance(state, str) else "unknown"
    pid = status.get("pid")
    status["pid"] = pid if type(pid) is int and 0 < pid <= MAX_PID else None
    for key in ("host", "stage", "run_id"):
        if not isinstance(status.get(key), str):
            status[key] = None
    stages = status.get("stages")
    status["stages"] = [s for s in stages if isinstance(s, str)] if isinstance(stages, list) else []
    for key in ("step", "total_steps", "resumed"):
        if key in status:
            status[key] = clean_step(status[key])
    for key in ("started", "updated", "ended", "eta_s", "pid_started"):
        if key in status:
            status[key] = clean_number(status[key])
    error = status.get("error")
    if error is not None and not isinstance(error, str):
        status["error"] = json.dumps(error, default=str)
    for key in ("last_metrics", "last_eval"):
        if key in status:
            status[key] = clean_metrics(status[key]) if isinstance(status[key], dict) else None
    return status


def read_status(path: Path) -> dict | None:
    """The status, or None if the file does not exist (yet) or cannot be parsed as an object."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STATUS_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_STATUS_BYTES:
        return None
    try:
        status = json.loads(data)
        if _has_surrogate_escape(data):
            status = printable(status)
    except (ValueError, RecursionError):
        return None
    return clean_status(status) if isinstance(status, dict) else None


def new_status(stage: str, total_steps: int) -> dict:
    now = time.time()
    return {
        "state": "starting", "pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
        "stages": [stage], "step": 0, "total_steps": total_steps, "started": now, "updated": now,
        "error": None,
    }


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (unix seconds, about 10 ms resolution); None off Linux or if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited but not yet reaped by its parent) is not a live run.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def effective_state(status: dict | None) -> str:
    """The state a viewer should show: `lost` when a live-looking run's process is gone.

    A run killed with SIGKILL (or a machine that rebooted) never writes its final state; on
    the same host we can tell by its pid, and by `pid_started` (the process's start time) when
    the pid has since been reused. Runs on another host are shown as they claim.
    """
    if status is None:
        return "unknown"
    state = status.get("state")
    if not isinstance(state, str):
        return "unknown"
    if state in LIVE_STATES and status.get("host") == socket.gethostname():
        pid = status.get("pid")
        if type(pid) is int and 0 < pid <= MAX_PID:
            if not pid_alive(pid):
                return "lost"
            started = status.get("pid_started")
            if isinstance(started, (int, float)) and not isinstance(started, bool):
                now = process_start_time(pid)
                if now is not None and abs(now - started) > 2.0:
                    return "lost"
    return state
