"""End to end in a real terminal (tmux): launch the smoke preset from the dashboard, watch a loss
appear, pause it, quit (the training process lives on), resume it with no viewer and let it
finish, reattach and see it finished, and leave no process behind. Slow (a CPU training run of
10 s to a couple of minutes, depending on load); skipped without tmux.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dswb.rundir import find_runs, read_status, send_command
from dswb.rundir.status import pid_alive

REPO = Path(__file__).resolve().parents[1]
COLS, ROWS = 120, 40

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


class Tmux:
    """One private tmux server (its own socket) holding one fixed-size session."""

    def __init__(self, socket: Path, session: str = "dswb-e2e") -> None:
        self.socket = socket
        self.session = session

    def run(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def start(self, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        self.run("new-session", "-d", "-s", self.session, "-x", str(COLS), "-y", str(ROWS), "-c", str(REPO),
                 f"env {exports} bash --norc --noprofile")

    def type(self, line: str) -> None:
        self.run("send-keys", "-t", self.session, "-l", line)
        self.run("send-keys", "-t", self.session, "Enter")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session)

    def wait_for(self, predicate, what: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{text}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=30)


def processes_mentioning(needle: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `needle`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_until(predicate, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def tmux(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install -y tmux); .ci/run installs it")
    term = Tmux(tmp_path / "tmux.sock")
    yield term
    term.kill()


def test_launch_quit_keep_training_reattach(tmux, tmp_path):
    root = tmp_path / "runs"
    dswb = f"{shlex.quote(sys.executable)} -m dswb"
    tmux.start({"TERM": "xterm-256color", "PS1": "$ ", "HF_HUB_OFFLINE": "1", "COLUMNS": str(COLS),
                "LINES": str(ROWS), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    try:
        tmux.type(f"{dswb} tui --runs-root {shlex.quote(str(root))}")
        tmux.wait_for(lambda s: "No runs under" in s, "the empty runs list")

        tmux.keys("n")
        tmux.wait_for(lambda s: "Launch a run" in s and "smoke" in s and "✔" in s, "the launch form (smoke, valid)")
        tmux.keys("C-l")
        screen = tmux.wait_for(lambda s: re.search(r"loss \d+\.\d+", s) is not None, "a loss value", timeout=180)
        runs = find_runs(root)
        assert len(runs) == 1, "one run was launched"
        run = runs[0]
        assert run.run_id in screen
        status = read_status(run.status)
        pid = status["pid"]
        assert pid_alive(pid)

        # Pause first so the check below does not race a fast machine finishing the smoke run.
        tmux.keys("p")
        tmux.wait_for(lambda s: "⏸ paused" in s, "the paused state", timeout=120)
        tmux.keys("q")
        tmux.wait_for(lambda s: "Runs in" not in s and "⏸" not in s and s.rstrip().endswith("$"),
                      "the shell prompt after quitting")
        assert pid_alive(pid), "quitting the dashboard leaves the training process running"
        assert read_status(run.status)["state"] == "paused"

        send_command(run.root, "resume")  # no viewer attached from here on
        wait_until(lambda: (read_status(run.status) or {}).get("state") == "finished", "the run to finish", 600)
        wait_until(lambda: not pid_alive(pid), "the training process to exit", 60)

        tmux.type(f"{dswb} tui --runs-root {shlex.quote(str(root))} --attach {run.run_id}")
        screen = tmux.wait_for(lambda s: "✔ finished" in s and "step 60/60" in s, "the finished run on reattach")
        assert re.search(r"loss \d+\.\d+", screen)
        tmux.keys("q")
        tmux.wait_for(lambda s: s.rstrip().endswith("$") and "✔ finished" not in s, "the prompt again")
    finally:
        tmux.kill()
        leftovers = processes_mentioning(str(root))
        for leftover in leftovers:  # only processes of this test: their command line names its tmp dir
            os.kill(leftover, signal.SIGKILL)
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert json.loads(run.status.read_text())["state"] == "finished"
