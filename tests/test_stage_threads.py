"""Per-stage torch threads (`<section>.threads`, -1: run.threads; 0: torch's default).

- each stage runs with its own count, the ones at -1 with run.threads, and a different one is logged;
- every checkpoint records the count its stage started with, and a resume keeps it even when the
  config now says otherwise, so the resumed run ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dswb.engine.runner as runner
from dswb.engine.checkpoint.layout import STATE_FILE, list_checkpoints
from dswb.rundir import read_events
from tests.helpers import run_in_process, tiny_config
from tests.test_resume_faults import StopAtStep


class Threads(StopAtStep):
    """Records torch's thread count inside each stage (at every step's metrics); stops at `step` if given."""

    def __init__(self, run_dir: Path, step: int | None = None) -> None:
        super().__init__(run_dir, step)
        self.seen: dict[str, set[int]] = {}

    def on_metrics(self, stage, step, total_steps, metrics, eta_s):
        self.seen.setdefault(stage, set()).add(torch.get_num_threads())
        super().on_metrics(stage, step, total_steps, metrics, eta_s)


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _thread_logs(run_dir: Path) -> list[str]:
    return [e["message"] for e in read_events(run_dir / "events.jsonl", ("log",)) if e["message"].startswith("threads:")]


def _recorded(run_dir: Path, stage: str) -> set[int]:
    return {json.loads((c.path / STATE_FILE).read_text())["threads"] for c in list_checkpoints(run_dir / "checkpoints" / stage)}


def test_each_stage_runs_with_its_own_threads_else_the_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "DEFAULT_THREADS", 3)   # what 0 means: torch's count at process start
    cfg = tiny_config('run.stages=["pretrain","sft"]', "run.threads=0", "train.threads=2", "train.steps=4",
                      "sft.steps=4", "sft.warmup_steps=1", "sft.threads=-1")
    run_dir = tmp_path / "run"
    seen = Threads(run_dir)
    assert run_in_process(cfg, run_dir, reporter=seen) == 0
    assert seen.seen == {"pretrain": {2}, "sft": {3}}
    assert _recorded(run_dir, "pretrain") == {2} and _recorded(run_dir, "sft") == {3}
    assert _thread_logs(run_dir) == ["threads: 2 for pretrain (train.threads; the run's: 3)"]


def test_resume_keeps_the_started_threads_and_stays_bitwise(tmp_path):
    started = tiny_config("train.threads=2")
    straight = tmp_path / "straight"
    assert run_in_process(started, straight) == 0

    interrupted = tmp_path / "interrupted"
    assert run_in_process(started, interrupted, reporter=StopAtStep(interrupted, 5)) == 130
    assert _recorded(interrupted, "pretrain") == {2}
    seen = Threads(interrupted)
    assert run_in_process(tiny_config("train.threads=1"), interrupted, resume=True, reporter=seen) == 0
    assert seen.seen == {"pretrain": {2}}
    assert _thread_logs(interrupted)[-1] == "threads: pretrain resumes with 2 threads, as it started " \
                                            "(train.threads now says 1)"

    a, b = (load_file(str(d / "final" / "pretrain" / "model.safetensors")) for d in (straight, interrupted))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [{e["step"]: e["metrics"]["loss"] for e in read_events(d / "events.jsonl", ("metrics",))}
              for d in (straight, interrupted)]
    assert losses[0] == losses[1]
