"""Start a run as a detached background process (its own session), so no viewer owns it.

Used by `dswb run --detach` and by the dashboard. Standard library only. The child is
`python -m dswb run ...`; its stdout/stderr go to `<run>/process.out`; closing the terminal,
quitting the TUI or losing SSH does not stop it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from dswb.config import load_config
from dswb.rundir.layout import RunPaths, create_run_dir, new_run_id
from dswb.rundir.status import new_status, read_status, write_status


def run_command(preset: str | None, runs_root: Path, run_dir: Path, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "dswb", "run"]
    if preset:
        cmd.append(str(preset))
    cmd += ["--runs-root", str(runs_root), "--run-dir", str(run_dir), "--plain"]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def _spawn(cmd: list[str], paths: RunPaths, env: dict | None) -> subprocess.Popen:
    out = open(paths.stdout, "ab")
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env={**os.environ, **(env or {})},
        )
    finally:
        out.close()
    # Reap the child when it ends so a long-lived viewer never accumulates zombies; if the
    # viewer exits first the child is re-parented to init, which reaps it.
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    return proc


def launch_detached(preset: str | None, runs_root: Path, overrides: list[str] = (),
                    run_dir: Path | None = None, env: dict | None = None) -> tuple[RunPaths, int]:
    """Validate the config here (errors surface before anything starts), then start the run.

    Returns the run's paths and the child's pid.
    """
    overrides = list(overrides)
    config = load_config(preset, overrides)
    runs_root = Path(runs_root)
    if run_dir is None:
        run_dir = runs_root / new_run_id(config.run.name, runs_root)
    paths = create_run_dir(Path(run_dir))
    # Visible at once as `starting` in every viewer; the child replaces it within seconds.
    status = {**new_status(config.run.stages[0], config.train.steps), "run_id": paths.run_id,
              "stages": list(config.run.stages), "pid": None}
    write_status(paths.status, status)
    proc = _spawn(run_command(preset, runs_root, paths.root, overrides), paths, env)
    current = read_status(paths.status)
    if current is not None and current.get("pid") is None:  # the child has not written yet
        write_status(paths.status, {**status, "pid": proc.pid})
    return paths, proc.pid


def resume_detached(run_root: Path, env: dict | None = None) -> tuple[RunPaths, int]:
    paths = RunPaths(Path(run_root))
    cmd = [sys.executable, "-m", "dswb", "run", "--resume", str(paths.root), "--plain"]
    proc = _spawn(cmd, paths, env)
    return paths, proc.pid
