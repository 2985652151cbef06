"""The built-in verifiable rewards on hand cases: the think/answer split, the format rule, math
equality through math-verify (LaTeX included), DAPO's overlong shaping, and the sources as a
stage combines them (answer part for exact_match, NaN totals for rows nothing scores)."""

from __future__ import annotations

import math

import pytest
import torch

from dswb.config.posttrain import RLSettings
from dswb.engine.data.records.thinking import split_thinking
from dswb.engine.rl.reward_rules import (format_rewards, format_score, length_score, linear_length_score, math_rewards,
                                         math_score, overlong_score)
from dswb.engine.rl.rewards import RewardInputs, build_rewards, weighted_total


@pytest.mark.parametrize("completion, opened, think, answer", [
    ("<think>add the units</think> 42", False, "add the units", "42"),
    ("add the units</think>42", True, "add the units", "42"),          # the prompt opened the thinking
    ("42", False, None, "42"),                                          # a model that does not think
    ("<think>still going", False, "still going", ""),                   # never closed: no answer
    ("still going", True, "still going", ""),
    ("<think>a</think>b</think> c", False, "a</think>b", "c"),          # the last closing tag ends it
])
def test_think_answer_split(completion, opened, think, answer):
    got = split_thinking(completion, ("<think>", "</think>"), opened)
    assert (got.think, got.answer) == (think, answer)


@pytest.mark.parametrize("completion, opened, regex, expected", [
    ("<think>3+4</think>7", False, "", 1.0),
    ("\n<think>3+4</think>\n7", False, "", 1.0),
    ("3+4</think>7", True, "", 1.0),
    ("<think>3+4</think>7", True, "", 0.0),          # the prompt opened it: a second opening tag
    ("3+4</think>7", False, "", 0.0),                 # no opening tag
    ("so <think>3+4</think>7", False, "", 0.0),      # text before the thinking
    ("<think>3+4</think>  ", False, "", 0.0),        # empty answer
    ("<think>3+4", False, "", 0.0),                  # never closed
    ("<think>a</think>7</think>", False, "", 0.0),   # a tag twice
    ("</think>7<think>", False, "", 0.0),            # out of order
    ("<think>x</think>The answer is 7.", False, r"<think>.*</think>The answer is \d+\.", 1.0),
    ("<think>x</think>7", False, r"<think>.*</think>The answer is \d+\.", 0.0),
])
def test_format_rule(completion, opened, regex, expected):
    assert format_score(completion, ("<think>", "</think>"), opened, regex) == expected


def test_format_with_other_tags_and_the_batch_signature():
    assert format_score("<reasoning>x</reasoning>1", ("<reasoning>", "</reasoning>")) == 1.0
    got = format_rewards(["p", "p"], ["<think>x</think>1", "x</think>1"], [[1], [1]], think_open=[False, True])
    assert got == [1.0, 1.0]


@pytest.mark.parametrize("answer, reference, expected", [
    ("1/2", "0.5", 1.0),
    ("\\frac{1}{2}", "0.5", 1.0),
    ("$\\frac{3}{6}$", "1/2", 1.0),
    ("\\boxed{42}", "42", 1.0),
    ("The answer is $\\boxed{42}$.", "42", 1.0),
    ("2x+1", "1+2x", 1.0),
    ("x^2 + 1", "1 + x^2", 1.0),
    ("0.333333", "\\frac{1}{3}", 1.0),
    ("3", "4", 0.0),
    ("hello", "4", 0.0),      # an answer that does not parse: wrong
    ("", "4", 0.0),
    ("4", "hello", None),     # a reference that does not parse: unscorable by this rule
    ("4", None, None),
])
def test_math_equality(answer, reference, expected):
    assert math_score(answer, reference) == expected


def test_math_batch_takes_the_answer_part():
    completions = ["<think>1/2 is 0.5</think>\\frac{1}{2}", "0.5</think>0.25", "<think>never closed 0.5"]
    got = math_rewards(["p"] * 3, completions, [[1]] * 3, answer=["0.5"] * 3, think_open=[False, True, False])
    assert got == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="no 'answer' field"):
        math_rewards(["p"], ["1"], [[1]])


def test_overlong_shaping_and_linear_length():
    # L_max 100, buffer 20: 0 up to 80 tokens, then linear to -1 at 100, -1 beyond
    assert [overlong_score(n, 100, 20) for n in (50, 80, 85, 90, 100, 101)] == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert overlong_score(90, 100) == pytest.approx(-0.6)     # buffer 0: a quarter of max_new_tokens
    assert overlong_score(3, 3) == 0.0 and overlong_score(4, 3) == -1.0   # too short for a buffer
    assert linear_length_score(16, 64) == -0.25
    assert length_score(16, 64, "linear") == -0.25 and length_score(16, 64, "overlong") == 0.0


def inputs(completions, answers=None, think_open=None, max_new_tokens=8) -> RewardInputs:
    n = len(completions)
    return RewardInputs(prompts=["p"] * n, completions=completions, completion_ids=[[1] * len(c) for c in completions],
                        ended=[True] * n, columns={} if answers is None else {"answer": answers},
                        think_open=think_open or [], max_new_tokens=max_new_tokens)


def in_process(rewards, **settings) -> RLSettings:
    return RLSettings(rewards=rewards, rewards_workers=0, **settings)


def test_sources_in_the_trainer_score_the_answer_part():
    section = in_process(["exact_match", "format", "math", "length"], max_new_tokens=20, overlong_buffer=8)
    combined = build_rewards(section.rewards, [], "grpo.rewards", run_rm=None, place=lambda m: m, section=section)
    assert combined.pool is None
    scores = combined(inputs(["<think>x</think>0.5", "0.5", "x</think>1/2", "<think>0.5"], ["0.5"] * 4,
                             think_open=[False, False, True, False], max_new_tokens=20))
    assert scores.per_source["exact_match"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert scores.per_source["format"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert scores.per_source["math"].tolist() == [1.0, 1.0, 1.0, 0.0]
    # 19, 3, 12, 10 "tokens": L_max 20, buffer 8: 0 up to 12, then -1/8 a token
    assert scores.per_source["length"].tolist() == [-0.875, 0.0, 0.0, 0.0]
    assert scores.unscorable_counts() == {"exact_match": 0, "format": 0, "math": 0, "length": 0}
    assert scores.errors == {}


def test_a_rule_that_raises_in_the_trainer_leaves_its_row_unscorable(monkeypatch):
    import dswb.engine.rl.reward_rules as rules

    real = rules.math_score

    def flaky(answer, reference):
        if answer == "boom":
            raise RuntimeError("sympy gave up\nsecond line")
        return real(answer, reference)

    monkeypatch.setattr(rules, "math_score", flaky)
    section = in_process(["math"])
    combined = build_rewards(["math"], [], "grpo.rewards", run_rm=None, place=lambda m: m, section=section)
    scores = combined(inputs(["boom", "4"], ["4", "4"]))
    assert scores.unscorable["math"].tolist() == [True, False]
    assert scores.errors == {"math": "RuntimeError: sympy gave up"}
    assert math.isnan(scores.total[0]) and scores.total[1] == 1.0


def test_total_is_nan_when_nothing_scores_a_row_or_a_source_failed():
    nan = math.nan
    values = torch.tensor([[1.0, nan, nan, 0.5], [2.0, 3.0, nan, 0.5]])
    failed = torch.tensor([[False, False, False, True], [False, False, False, False]])
    total = weighted_total(values, torch.tensor([1.0, 0.5]), failed)
    assert total[:2].tolist() == [2.0, 1.5]          # NaN skipped (a source that does not apply)
    assert math.isnan(total[2]) and math.isnan(total[3])   # nothing applies; a failure


def test_math_and_exact_match_need_answers():
    from dswb.errors import UserError

    combined = build_rewards(["math"], [], "grpo.rewards", run_rm=None, place=lambda m: m, section=in_process(["math"]))
    with pytest.raises(UserError, match="math reward: the prompt records have no 'answer' field"):
        combined(inputs(["1"]))
