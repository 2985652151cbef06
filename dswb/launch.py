"""Start a run as a detached background process (its own session), so no viewer owns it, and
start a distributed run under torchrun.

Used by `dswb run --detach` and by the dashboard. Standard library only. The child is
`python -m dswb run ...`; its stdout/stderr go to `<run>/process.out`; closing the terminal,
quitting the TUI or losing SSH does not stop it.

Several processes (`dswb run --nproc N`, a `Launch`): `dswb run` runs PyTorch's launcher,
`python -m torch.distributed.run --nproc-per-node N ... -m dswb run ...` (one process per GPU,
or per CPU share), in the foreground, in its own session, and supervises it (`supervise`): the
first Ctrl-C asks the run to stop (a `stop` command: every rank checkpoints at the same step), the
second terminates torchrun, the third kills it; when torchrun ends while `status.json` still says
the run is live (rank 0 was killed before it could write), the run is recorded `failed`. With
`--detach` the detached child is that supervising `dswb run --nproc N`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dswb.config import load_config
from dswb.rundir.layout import RunPaths, create_run_dir, new_run_id
from dswb.rundir.status import new_status, read_status, write_status

SUPERVISED_ENV = "DSWB_SUPERVISED"   # set for the ranks of a torchrun that `dswb run --nproc` supervises


@dataclass(frozen=True)
class Launch:
    """How many processes a run takes: `nproc` on this machine, `nnodes` machines in all (this one
    is `node_rank`; node 0 listens on `rdzv_endpoint`, HOST:PORT)."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    def dswb_args(self) -> list[str]:
        """The same launch as `dswb run` options."""
        args = ["--nproc", str(self.nproc)]
        if self.nnodes > 1:
            args += ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank)]
        if self.rdzv_endpoint:
            args += ["--rdzv-endpoint", self.rdzv_endpoint]
        return args

    def torchrun(self, dswb_args: list[str]) -> list[str]:
        """`python -m torch.distributed.run ... -m dswb run <dswb_args>`."""
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(self.nproc)]
        if self.nnodes == 1 and not self.rdzv_endpoint:
            cmd.append("--standalone")
        else:
            cmd += ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank)]
            if self.rdzv_endpoint:
                cmd += ["--rdzv-endpoint", self.rdzv_endpoint]
        return cmd + ["-m", "dswb", "run", *dswb_args]


def torchrun_env(nproc: int) -> dict:
    """The environment of the torchrun launch: the CPU threads shared out (torchrun would set 1 and
    print a banner when OMP_NUM_THREADS is unset)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    env[SUPERVISED_ENV] = "1"
    return env


def supervise(cmd: list[str], paths: RunPaths, env: dict | None = None, record: bool = True) -> int:
    """Run torchrun (`cmd`) in the foreground until it ends; returns its exit code (see the module
    docstring for Ctrl-C). Afterwards (with `record`: on node 0) a run whose status still says it is
    live is recorded failed."""
    from dswb.rundir.control import send_command

    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    presses = [0]

    def on_signal(signum, frame) -> None:
        presses[0] += 1
        try:
            if presses[0] == 1:
                send_command(paths.root, "stop")
                print("stopping: every rank checkpoints at its next step (Ctrl-C again to terminate)", file=sys.stderr)
            elif presses[0] == 2:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, Exception):  # noqa: BLE001 - the run may be gone already
            pass

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if record:
        record_unfinished(paths, code)
    return code


def record_unfinished(paths: RunPaths, code: int) -> bool:
    """When torchrun has ended but `status.json` says the run is live (its rank 0 was killed, or
    never started), record it `failed` with one line; returns whether it did."""
    from dswb.rundir.events import EventWriter
    from dswb.rundir.status import LIVE_STATES, pid_alive

    status = read_status(paths.status)
    if status is None or status.get("state") not in LIVE_STATES or status.get("host") != socket.gethostname():
        return False
    pid = status.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
        return False
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    error = (f"the training processes ended ({how} from torchrun) without recording a final state: a rank was "
             f"killed or crashed (see {paths.stdout.name if paths.stdout.exists() else 'the output above'} and "
             f"train.rank-*.log); resume from the last checkpoint with `dswb run --resume {paths.root}`")
    write_status(paths.status, {**status, "state": "failed", "error": error, "ended": time.time()})
    try:
        events = EventWriter(paths.events)
        events.emit("run_end", None, status.get("step") or 0, state="failed", error=error)
        events.close()
    except OSError:
        pass
    return True


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
                    run_dir: Path | None = None, env: dict | None = None,
                    launch: Launch | None = None) -> tuple[RunPaths, int]:
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
    cmd = run_command(preset, runs_root, paths.root, overrides) + (launch.dswb_args() if launch else [])
    proc = _spawn(cmd, paths, env)
    current = read_status(paths.status)
    if current is not None and current.get("pid") is None:  # the child has not written yet
        write_status(paths.status, {**status, "pid": proc.pid})
    return paths, proc.pid


def resume_detached(run_root: Path, env: dict | None = None, launch: Launch | None = None) -> tuple[RunPaths, int]:
    paths = RunPaths(Path(run_root))
    cmd = [sys.executable, "-m", "dswb", "run", "--resume", str(paths.root), "--plain"]
    cmd += launch.dswb_args() if launch else []
    proc = _spawn(cmd, paths, env)
    return paths, proc.pid


def under_torchrun() -> bool:
    """Was this process started by torchrun (it sets RANK, WORLD_SIZE and LOCAL_RANK)?"""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
