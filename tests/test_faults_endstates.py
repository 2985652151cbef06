"""End states that must be right: a resume with nothing left to do, a CUDA out-of-memory error
(simulated on the CPU by making the step raise `torch.cuda.OutOfMemoryError`), and `lost` for a
run whose process is gone or whose pid now belongs to another process."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import dswb.engine.train.loop as loop
from dswb.cli.app import app
from dswb.engine.checkpoint.layout import list_checkpoints
from dswb.rundir import effective_state, read_events, read_status, write_status
from dswb.rundir.status import process_start_time
from tests.helpers import TINY, run_in_process, tiny_config

runner = CliRunner()
CFG = ("train.steps=12", "checkpoint.every=4", "checkpoint.keep_last=3")


def test_resume_with_every_stage_finished_reports_finished(tmp_path):
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config("train.steps=4", "checkpoint.every=0"), run_dir) == 0
    status = read_status(run_dir / "status.json")
    write_status(run_dir / "status.json", {**status, "state": "stopped"})  # e.g. stopped after its final save
    result = runner.invoke(app, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"finished: {run_dir}" in result.stdout and "error" not in result.output
    status = read_status(run_dir / "status.json")
    assert status["state"] == "finished" and status["error"] is None and status["resumed"] == 1
    assert [e["message"] for e in read_events(run_dir / "events.jsonl", ("log",))][-1] == "already finished, skipping"


def _oom_at_call(monkeypatch, n: int) -> None:
    real, calls = loop.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)


@pytest.mark.slow
def test_out_of_memory_names_the_batch_and_settings_and_checkpoints_the_last_step(tmp_path, monkeypatch):
    _oom_at_call(monkeypatch, 7)
    run_dir = tmp_path / "oom"
    assert run_in_process(tiny_config(*CFG), run_dir) == 1
    status = read_status(run_dir / "status.json")
    assert status["state"] == "failed"
    error = status["error"]
    assert error.startswith("CUDA out of memory in step 7 (1 micro-batch of ") and "\n" not in error
    assert "lower batching.max_tokens (now 512) and raise train.grad_accum (now 1)" in error
    assert error.endswith("checkpoint of the last finished step (6) written")
    events = read_events(run_dir / "events.jsonl")
    shape = next(e for e in events if e["kind"] == "metrics" and e["step"] == 6)["metrics"]
    assert [(e["step"], e["reason"]) for e in events if e["kind"] == "checkpoint"] == [(4, "periodic"), (6, "oom")]
    assert [e["code"] for e in events if e["kind"] == "alert"] == ["out_of_memory"]
    assert shape["seq_len"] > 0

    monkeypatch.undo()
    reference = tmp_path / "reference"
    assert run_in_process(tiny_config(*CFG), reference) == 0
    assert run_in_process(tiny_config(*CFG), run_dir, resume=True) == 0
    a = load_file(str(reference / "final" / "pretrain" / "model.safetensors"))
    b = load_file(str(run_dir / "final" / "pretrain" / "model.safetensors"))
    assert all(a[k].equal(b[k]) for k in a)   # the OOM checkpoint is exactly the state after step 6


def test_out_of_memory_inside_the_update_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """An OOM after the optimizer update began may leave half-updated weights: no checkpoint then."""
    import dswb.engine.stages.pretrain as pretrain

    real_build = pretrain.build_optimizer

    def build(*args, **kwargs):
        optimizer = real_build(*args, **kwargs)
        real_step, count = optimizer.step, {"n": 0}

        def step(*a, **k):   # the 6th update runs (weights change), then memory runs out
            count["n"] += 1
            out = real_step(*a, **k)
            if count["n"] == 6:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory in the optimizer")
            return out

        optimizer.step = step
        return optimizer

    monkeypatch.setattr(pretrain, "build_optimizer", build)
    run_dir = tmp_path / "oom-update"
    assert run_in_process(tiny_config(*CFG), run_dir) == 1
    error = read_status(run_dir / "status.json")["error"]
    assert error.startswith("CUDA out of memory in step 6 (1 micro-batch of ")
    assert error.endswith("no checkpoint: the optimizer update was under way; the last checkpoint is kept")
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints" / "pretrain")] == [4]


def test_out_of_memory_exits_1_with_one_error_line_from_the_cli(tmp_path, monkeypatch):
    _oom_at_call(monkeypatch, 2)
    run_dir = tmp_path / "cli-oom"
    args = [a for item in TINY + ["train.steps=3"] for a in ("--set", item)]
    result = runner.invoke(app, ["run", "--run-dir", str(run_dir), "--quiet", *args])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: CUDA out of memory in step 2"), result.stderr
    assert errors[0].endswith("checkpoint of the last finished step (1) written")


def _status(pid: int, **extra) -> dict:
    return {"state": "running", "pid": pid, "host": socket.gethostname(), "stage": "pretrain", "step": 3,
            "total_steps": 10, "started": time.time() - 5, **extra}


def test_gone_or_reused_pid_reads_lost_in_every_viewer(tmp_path):
    root = tmp_path / "runs"
    live = root / "live"
    live.mkdir(parents=True)
    (live / "config.toml").write_text("")
    write_status(live / "status.json", _status(os.getpid(), pid_started=process_start_time(os.getpid())))
    assert effective_state(read_status(live / "status.json")) == "running"

    reused = root / "reused"   # our pid, but the run's process started at another time
    reused.mkdir()
    (reused / "config.toml").write_text("")
    write_status(reused / "status.json", _status(os.getpid(), pid_started=1000.0))
    assert effective_state(read_status(reused / "status.json")) == "lost"

    listing = runner.invoke(app, ["runs", "list", "--runs-root", str(root), "--json"])
    states = {r["run_id"]: r["state"] for r in __import__("json").loads(listing.stdout)}
    assert states == {"live": "running", "reused": "lost"}
    show = runner.invoke(app, ["runs", "show", str(reused)])
    assert show.exit_code == 0 and "state        lost" in show.stdout
    stop = runner.invoke(app, ["runs", "stop", str(reused)])
    assert stop.exit_code == 2 and "is lost" in stop.stderr
