"""A short version of the reasoning demo (presets/reasoning.toml): pretraining on worked sums, a
cold start on a few worked answers, GRPO on the format and exact-match rewards, with the reward
rules running in a worker process. It checks the pieces fit, not the demo's accuracy (README)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import pytest

from dswb.config.load import load_config
from dswb.rundir import RunPaths
from dswb.rundir.events import read_events
from tests.helpers import run_in_process

PRESET = Path(__file__).parent.parent / "presets" / "reasoning.toml"
SHORT = ["train.steps=12", "sft.steps=4", "sft.eval_every=0", "grpo.steps=3", "grpo.prompts_per_step=4",
         "grpo.group_size=4", "grpo.samples_every=3", "grpo.eval_every=0", "task.n_train=400", "task.n_val=20",
         "task.n_test=20", "eval.every=0", "eval.task_samples=20", "checkpoint.every=0"]


@pytest.mark.slow
def test_short_reasoning_demo_thinks_in_every_stage(tmp_path):
    config = load_config(PRESET, SHORT)
    assert run_in_process(config, tmp_path / "run") == 0
    paths = RunPaths(tmp_path / "run")
    info = json.loads((paths.final("sft") / "dswb_stage.json").read_text())
    assert info["task"]["think"] is True and info["task"]["digits"] == 3
    metrics = [e["metrics"] for e in read_events(paths.events, ("metrics",)) if e.get("stage") == "grpo"]
    assert len(metrics) == 3
    for m in metrics:
        assert 0.0 <= m["reasoning/format_rate"] <= 1.0
        assert m["reasoning/accuracy"] == m["rewards/exact_match/mean"]
        assert m["rewards/format/unscorable"] == 0 and m["rewards/exact_match/unscorable"] == 0
        assert m["reasoning/think_max_tokens"] >= m["reasoning/think_mean_tokens"]
    rows = [row for e in read_events(paths.events, ("samples",)) for row in e["samples"]]
    assert rows and all({"think", "answer", "think_tokens"} <= set(row) for row in rows)
    tests = [e for e in read_events(paths.events, ("eval",)) if e.get("stage") == "grpo" and "test_acc" in e["metrics"]]
    assert len(tests) == 1
