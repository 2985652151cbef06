"""`status.json`: the run's current state, replaced atomically so readers never see half a file."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

from dswb.rundir.events import json_safe

STATES = ("starting", "running", "paused", "finished", "failed", "stopped")
LIVE_STATES = ("starting", "running", "paused")


def write_status(path: Path, status: dict) -> None:
    """Write `status` to `path` via a temporary file and `os.replace` (atomic on POSIX)."""
    status = json_safe({**status, "updated": time.time()})
    fd, tmp = tempfile.mkstemp(prefix=".status-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(status, f, indent=1, allow_nan=False, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(path: Path) -> dict | None:
    """The status, or None if the file does not exist (yet) or cannot be parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def new_status(stage: str, total_steps: int) -> dict:
    now = time.time()
    return {
        "state": "starting", "pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
        "stages": [stage], "step": 0, "total_steps": total_steps, "started": now, "updated": now,
        "error": None,
    }


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
    the same host we can tell by its pid. Runs on another host are shown as they claim.
    """
    if status is None:
        return "unknown"
    state = status.get("state", "unknown")
    if state in LIVE_STATES and status.get("host") == socket.gethostname():
        pid = status.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            return "lost"
    return state
