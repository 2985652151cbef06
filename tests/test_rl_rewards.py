"""Reward sources: the exact-match rule, user functions with TRL's signature, weighted sums with
NaN skipped, and one clear error for every mistake a user can make with them."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch

from dswb.engine.rl.rewards import CombinedReward, ExactMatch, PythonReward, RewardInputs, build_rewards
from dswb.errors import UserError


def inputs(completions, answers=None, **columns) -> RewardInputs:
    cols = dict(columns)
    if answers is not None:
        cols["answer"] = answers
    return RewardInputs(prompts=["1+1="] * len(completions), completions=completions,
                        completion_ids=[[1]] * len(completions), ended=[True] * len(completions), columns=cols)


def write_module(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_exact_match_and_missing_answers():
    assert ExactMatch()(inputs(["002", "003", " 002 "], ["002", "002", "002"])) == [1.0, 0.0, 1.0]
    got = ExactMatch()(inputs(["002"], [None]))
    assert math.isnan(got[0])
    with pytest.raises(UserError, match="no 'answer' field"):
        ExactMatch()(inputs(["002"]))


def test_python_function_gets_trl_arguments_and_columns(tmp_path):
    path = write_module(tmp_path, """
        def length_bonus(prompts, completions, completion_ids, ended, level, **kwargs):
            assert len(prompts) == len(completions) == len(completion_ids) == len(ended) == len(level)
            return [len(c) * l if e else None for c, l, e in zip(completions, level, ended)]
    """)
    source = PythonReward(f"{path}:length_bonus", "grpo.rewards[0]")
    assert source.name == "length_bonus"
    data = inputs(["ab", "abc"], level=[1, 2])
    data.ended = [True, False]
    got = source(data)
    assert got[0] == 2.0 and math.isnan(got[1])


def test_module_function_imports_from_the_working_directory(tmp_path, monkeypatch):
    write_module(tmp_path, "def one(completions, **kw):\n    return [1] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    assert PythonReward("my_rewards:one", "w")(inputs(["x", "y"])) == [1.0, 1.0]


@pytest.mark.parametrize("body, spec, message", [
    ("def f(**kw):\n    return [1]\n", "f", "must return a list of 2 numbers, got 1 values"),
    ("def f(**kw):\n    return ['a', 'b']\n", "f", "returned 'a', not a number"),
    ("def f(**kw):\n    raise KeyError('answer')\n", "f", "raised KeyError"),
    ("def f(**kw):\n    return 3\n", "f", "got int"),
    ("x = 1\n", "g", "has no function 'g'"),
    ("import not_a_module_anywhere\n", "f", "cannot import"),
    ("raise RuntimeError('boom')\n", "f", "raised RuntimeError: boom"),
])
def test_user_function_mistakes_are_one_line_errors(tmp_path, body, spec, message):
    path = write_module(tmp_path, body)
    with pytest.raises(UserError) as err:
        PythonReward(f"{path}:{spec}", "ppo.rewards[1]")(inputs(["a", "b"]))
    assert message in str(err.value) and str(err.value).startswith("ppo.rewards[1]") and "\n" not in str(err.value)


def test_missing_file_and_missing_run_reward_model(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        PythonReward(f"{tmp_path}/none.py:f", "w")
    with pytest.raises(UserError, match="this run has no reward model"):
        build_rewards(["rm"], [], "grpo.rewards", run_rm=tmp_path / "final" / "rm", place=lambda m: m)
    with pytest.raises(UserError, match="not a model directory"):
        build_rewards([f"rm:{tmp_path}"], [], "grpo.rewards", run_rm=None, place=lambda m: m)


def test_weighted_sum_skips_nan_per_source(tmp_path):
    path = write_module(tmp_path, "def half(completions, **kw):\n    return [0.5, None]\n")
    combined = build_rewards(["exact_match", f"{path}:half"], [1.0, 2.0], "grpo.rewards", run_rm=None,
                             place=lambda m: m)
    scores = combined(inputs(["002", "003"], ["002", "002"]))
    assert combined.names == ["exact_match", "half"]
    assert torch.allclose(scores.total, torch.tensor([2.0, 0.0]))
    assert scores.per_source["exact_match"].tolist() == [1.0, 0.0]
    assert math.isnan(scores.per_source["half"][1])


def test_same_source_twice_gets_distinct_names():
    combined = CombinedReward([ExactMatch(), ExactMatch()], [1.0, 1.0])
    assert combined.names == ["exact_match_0", "exact_match_1"]
