"""A 2-process run from the command line (`dswb run --nproc 2`, torchrun, gloo) stops and resumes
with every step trained once and as one process trains it, and fails cleanly when a rank is killed,
keeping a checkpoint that verifies and resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY, run_in_process, tiny_config

COMMON = ["run.device=cpu", "train.steps=36", "checkpoint.every=0", "eval.task_samples=4", "monitor.log_every=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def dswb(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dswb", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def sets(*overrides: str) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def status(run: Path) -> dict:
    from dswb.rundir import read_status

    return read_status(run / "status.json") or {}


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def losses_by_step(run: Path) -> dict[int, float]:
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    return {e["step"]: e["metrics"]["loss"] for e in events if e["kind"] == "metrics"}


def detached(run: Path, *overrides: str) -> int:
    out = dswb("run", "--nproc", "2", "--detach", "--runs-root", str(run.parent), "--run-dir", str(run),
               *sets(*TINY, *COMMON, *overrides))
    assert out.returncode == 0, out.stderr
    return int(re.search(r"pid (\d+)", out.stdout).group(1))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stop_and_resume_a_two_process_run(tmp_path):
    run = tmp_path / "runs" / "two"
    detached(run)
    wait_for(lambda: (status(run).get("step") or 0) >= 3, "step 3")
    stop = dswb("runs", "stop", str(run), "--wait", "90")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    stopped = status(run)
    assert stopped["state"] == "stopped" and stopped["step"] < 36, stopped
    k = stopped["step"]
    assert (run / "checkpoints" / "pretrain" / f"step-{k}" / "dcp" / ".metadata").is_file()
    assert "stopped (another rank was asked to stop)" in (run / "train.rank-1.log").read_text()

    resuming = subprocess.Popen([sys.executable, "-m", "dswb", "run", "--resume", str(run), "--nproc", "2", "-q"],
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # meanwhile, one process on the same global batches (2 micro-batches per step)
    assert run_in_process(tiny_config(*COMMON, "train.grad_accum=2"), tmp_path / "ref" / "one") == 0
    out, _ = resuming.communicate(timeout=180)
    assert resuming.returncode == 0, out
    assert status(run)["state"] == "finished" and f"finished: {run}" in out
    steps = [json.loads(line)["step"] for line in (run / "events.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "metrics"]
    assert steps == list(range(1, 37))   # every step once: none lost, none repeated
    two, one = losses_by_step(run), losses_by_step(tmp_path / "ref" / "one")
    assert [two[s] for s in range(1, 37)] == pytest.approx([one[s] for s in range(1, 37)], rel=2e-5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_rank_fails_the_run_and_its_checkpoint_resumes(tmp_path):
    from dswb.rundir.manifest import verify_dir
    from dswb.rundir.status import pid_alive

    run = tmp_path / "runs" / "killed"
    # long enough that the run is still going when the test has seen a checkpoint (status.json is written
    # at most twice a second: a short run could end, or rotate a named checkpoint away, between two looks)
    supervisor = detached(run, "checkpoint.every=3", "train.steps=150")
    checkpoints = run / "checkpoints" / "pretrain"
    wait_for(lambda: (status(run).get("step") or 0) >= 5 and checkpoints.is_dir()
             and any(p.name.startswith("step-") for p in checkpoints.iterdir()), "step 5 and a checkpoint")
    rank1 = status(run)["ranks"][1]["pid"]
    os.kill(rank1, signal.SIGKILL)
    wait_for(lambda: status(run).get("state") == "failed", "the failed state", timeout=60)
    error = status(run)["error"]
    assert error.startswith(f"rank 1 (pid {rank1}) of 2 died (killed or crashed); a collective on rank 0 failed")
    assert "\n" not in error
    wait_for(lambda: not pid_alive(supervisor), "the launcher to exit", timeout=90)
    out = (run / "process.out").read_text()
    assert f"error: {error}" in out and f"failed: {run}" in out

    kept = sorted((p for p in (run / "checkpoints" / "pretrain").iterdir() if p.name.startswith("step-")),
                  key=lambda p: int(p.name[5:]))
    assert kept and all(verify_dir(p).status == "ok" for p in kept)
    last = int(kept[-1].name[5:])
    # the last checkpoint loads on one process (a world of one) and the run finishes
    from dswb.config import load_config

    assert run_in_process(load_config(run / "config.toml"), run, resume=True) == 0
    assert status(run)["state"] == "finished"
    assert f"resumed from step-{last}" in (run / "train.log").read_text()
