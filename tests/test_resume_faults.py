"""Checkpoint, resume and faults on the real engine (tiny model, CPU).

- a run stopped through its control file and resumed ends bitwise equal to an uninterrupted run;
- `kill -9` during training and during a checkpoint write leaves the newest checkpoint loadable;
- non-finite losses are skipped, counted, and fail the run after `train.max_bad_steps`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dswb.engine.checkpoint.layout import latest_checkpoint, list_checkpoints
from dswb.rundir import read_events, read_status, send_command
from tests.helpers import TINY, run_in_process, tiny_config


class StopAtStep:
    """A console reporter that asks the run (through the real control file) to stop at a step."""

    def __init__(self, run_dir: Path, step: int) -> None:
        self.run_dir, self.step = run_dir, step

    def on_metrics(self, stage, step, total_steps, metrics, eta_s):
        if step == self.step:
            send_command(self.run_dir, "stop")

    def on_event(self, event):
        pass

    def on_stage_start(self, *a):
        pass

    def on_stage_end(self, *a):
        pass


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "pretrain" / "model.safetensors"))


@pytest.mark.parametrize("variant", [
    [],
    ["batching.mode=pack", "batching.seq_len_warmup_steps=8", "batching.seq_len_warmup_start=8"],
    ["train.grad_accum=2", "batching.max_tokens=256"],
], ids=["bucket", "pack+seq-warmup", "grad-accum"])
def test_stop_then_resume_is_bitwise_equal_to_uninterrupted(tmp_path, variant):
    cfg = tiny_config(*variant)
    straight = tmp_path / "straight"
    assert run_in_process(cfg, straight) == 0

    interrupted = tmp_path / "interrupted"
    code = run_in_process(cfg, interrupted, reporter=StopAtStep(interrupted, 5))
    assert code == 130
    status = read_status(interrupted / "status.json")
    assert status["state"] == "stopped" and status["step"] == 5
    assert latest_checkpoint(interrupted / "checkpoints" / "pretrain").step == 5
    assert not (interrupted / "final" / "pretrain").exists()

    assert run_in_process(cfg, interrupted, resume=True) == 0
    assert read_status(interrupted / "status.json")["state"] == "finished"
    a, b = _weights(straight), _weights(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = {e["step"]: e["metrics"]["loss"] for e in read_events(straight / "events.jsonl", ("metrics",))}
    resumed = {e["step"]: e["metrics"]["loss"] for e in read_events(interrupted / "events.jsonl", ("metrics",))}
    assert losses == resumed


class CheckpointAtStep(StopAtStep):
    def on_metrics(self, stage, step, total_steps, metrics, eta_s):
        if step == self.step:
            send_command(self.run_dir, "checkpoint")


def test_checkpoint_now_through_the_control_file(tmp_path):
    run_dir = tmp_path / "ckpt-now"
    assert run_in_process(tiny_config("checkpoint.every=0", "checkpoint.keep_last=5"), run_dir,
                          reporter=CheckpointAtStep(run_dir, 3)) == 0
    reasons = [(e["step"], e["reason"]) for e in read_events(run_dir / "events.jsonl", ("checkpoint",))]
    assert reasons == [(3, "request"), (12, "final")]
    assert [e["cmd"] for e in read_events(run_dir / "events.jsonl", ("control",))] == ["checkpoint"]


def test_non_finite_losses_are_skipped_then_fail_the_run(tmp_path, monkeypatch):
    import dswb.engine.train.step as train_step

    real = train_step.token_loss_sum
    calls = {"n": 0}

    def poisoned(logits, labels):
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] > 6 else loss

    monkeypatch.setattr(train_step, "token_loss_sum", poisoned)
    run_dir = tmp_path / "nan"
    code = run_in_process(tiny_config("train.max_bad_steps=3", "checkpoint.every=2"), run_dir)
    assert code == 1
    status = read_status(run_dir / "status.json")
    assert status["state"] == "failed"
    assert "non-finite for 3 steps in a row" in status["error"]
    alerts = read_events(run_dir / "events.jsonl", ("alert",))
    assert [a["code"] for a in alerts] == ["nonfinite_loss"] * 3
    assert latest_checkpoint(run_dir / "checkpoints" / "pretrain").step == 6  # the last good one


def _start(run_dir: Path, *extra: str, resume: bool = False) -> subprocess.Popen:
    args = [sys.executable, "-m", "dswb", "run", "--plain", "--quiet"]
    if resume:
        args += ["--resume", str(run_dir)]
    else:
        args += ["--run-dir", str(run_dir)]
        for item in TINY + list(extra):
            args += ["--set", item]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _assert_newest_checkpoint_loads(run_dir: Path) -> int:
    """Load the newest complete checkpoint exactly as a resume does; returns its step."""
    ckpt = latest_checkpoint(run_dir / "checkpoints" / "pretrain")
    assert ckpt is not None
    weights = load_file(str(ckpt.path / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    torch.load(ckpt.path / "optimizer.pt", weights_only=True)
    state = json.loads((ckpt.path / "trainer_state.json").read_text())
    assert state["step"] == ckpt.step and "data" in state
    return ckpt.step


def _wait_for(predicate, timeout: float, every: float = 0.02) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_9_during_training_then_resume(tmp_path):
    run_dir = tmp_path / "killed"
    proc = _start(run_dir, "train.steps=150", "checkpoint.every=3")
    assert _wait_for(lambda: len(list_checkpoints(run_dir / "checkpoints" / "pretrain")) >= 2, 120)
    _kill(proc)
    step = _assert_newest_checkpoint_loads(run_dir)
    from dswb.rundir import effective_state
    assert effective_state(read_status(run_dir / "status.json")) == "lost"

    resumed = _start(run_dir, resume=True)
    _, err = resumed.communicate(timeout=200)
    assert resumed.returncode == 0, err.decode()
    status = read_status(run_dir / "status.json")
    assert status["state"] == "finished" and status["step"] == 150
    starts = read_events(run_dir / "events.jsonl", ("stage_start",))
    assert starts[-1]["step"] == step
    assert (run_dir / "final" / "pretrain" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    """Checkpoint every step of the ~8 M-parameter model so a write takes a good part of each
    step, and kill the process the moment a write is in progress (its temporary directory
    exists). The newest complete checkpoint must load, and a resume must remove the partial
    directory and start from that checkpoint."""
    for attempt in range(8):
        run_dir = tmp_path / f"attempt{attempt}"
        ckpt_dir = run_dir / "checkpoints" / "pretrain"
        proc = _start(run_dir, "model.size=small", "train.steps=1000", "checkpoint.every=1", "checkpoint.keep_last=2")
        assert _wait_for(lambda: len(list_checkpoints(ckpt_dir)) >= 1, 90)
        _wait_for(lambda: bool(list(ckpt_dir.glob(".tmp-step-*"))), 20, every=0.0005)
        _kill(proc)
        if list(ckpt_dir.glob(".tmp-step-*")):
            break
    else:
        pytest.fail("never managed to kill the run in the middle of a checkpoint write")
    step = _assert_newest_checkpoint_loads(run_dir)

    resumed = _start(run_dir, resume=True)
    try:
        assert _wait_for(lambda: any(e["step"] == step for e in read_events(run_dir / "events.jsonl", ("stage_start",))[1:]), 120)
        assert not list(ckpt_dir.glob(".tmp-step-*"))
        logs = [e["message"] for e in read_events(run_dir / "events.jsonl", ("log",))]
        assert any("incomplete checkpoint" in m for m in logs)
    finally:
        _kill(resumed)
