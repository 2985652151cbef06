"""`dswb bench grpo-vs-trl --task`: what each task hands dswb's side and TRL's, checked without
training (the runs themselves are the bench's, not a test's)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import pytest

from dswb.bench import grpo_vs_trl
from dswb.cli.bench_cmd import bench
from dswb.config.load import load_config
from dswb.engine.data.records.task import score
from dswb.errors import UserError


def test_dswb_side_holds_the_seed_0_split_of_the_task():
    for task in grpo_vs_trl.TASKS.values():
        config = load_config(None, ["run.seed=2", *task.overrides()])
        assert config.task.seed == 0 and config.run.seed == 2
        assert (config.task.digits, config.task.think) == (task.digits, task.think)
        assert config.grpo.rewards == list(task.rewards)


def test_reasoning_files_hold_worked_completions_and_plain_answers(tmp_path):
    task = grpo_vs_trl.REASONING
    files = grpo_vs_trl.task_files(tmp_path, task)
    prompt = json.loads(files["grpo"].read_text().splitlines()[0])
    sft = json.loads(files["sft"].read_text().splitlines()[0])
    assert prompt["prompt"] == sft["prompt"] and len(prompt["answer"]) == 4
    assert sft["completion"].startswith("<think>") and sft["completion"].endswith("</think>" + prompt["answer"])
    assert score(sft["completion"], prompt["answer"])


def test_trl_gets_the_same_rules_as_functions():
    fmt, exact = grpo_vs_trl.trl_rewards(grpo_vs_trl.REASONING)
    completions = ["<think>7+6=13</think>0843", "0843", "<think>7+6=13</think>0842"]
    assert fmt(completions=completions) == [1.0, 0.0, 1.0]
    assert exact(completions=completions, answer=["0843"] * 3) == [1.0, 1.0, 0.0]


def test_task_option_is_checked():
    with pytest.raises(UserError, match="unknown task 'nope'"):
        bench("grpo-vs-trl", json_path=None, quick=True, trials=None, init=None, live=False, threads=None, parts=None,
              task="nope")
    with pytest.raises(UserError, match="takes no --task"):
        bench("batching", json_path=None, quick=True, trials=None, init=None, live=False, threads=None, parts=None,
              task="reasoning")
