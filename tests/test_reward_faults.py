"""Hostile reward functions in a real GRPO stage (tiny model, CPU): a function that hangs costs its
completions (unscorable: counted every iteration, one `reward_unscorable` alert) and the stage
finishes; a function that returns the wrong number of values stops the run with exit code 2 and one
line naming the reward."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from dswb.rundir import read_events
from tests.helpers import run_in_process
from tests.test_posttrain_stages import pretrained, stage_config  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow

FUNCTIONS = '''
import os, time

def hangs_once(prompts, completions, **kw):
    """The first chunk ever scored hangs (past the time limit); every later one scores 1."""
    try:
        os.close(os.open(os.path.join(os.path.dirname(__file__), "hung"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return [1.0] * len(completions)
    time.sleep(3600)

def short(prompts, completions, **kw):
    return [1.0] * (len(completions) - 1)
'''


def write_functions(tmp_path: Path) -> Path:
    path = tmp_path / "hostile_rewards.py"
    path.write_text(textwrap.dedent(FUNCTIONS))
    return path


@pytest.mark.parametrize("stage, chunk", [("grpo", 8), ("ppo", 4)])   # half of 16 / 8 completions
def test_a_hanging_function_costs_its_completions_not_the_run(tmp_path, pretrained, stage, chunk):  # noqa: F811
    path = write_functions(tmp_path)
    rewards = f'{stage}.rewards=["exact_match", "format", "{path}:hangs_once"]'
    cfg = stage_config(stage, pretrained, f"{stage}.steps=3", f"{stage}.rewards_workers=2",
                       f"{stage}.rewards_timeout_s=1", rewards)
    run = tmp_path / "run"
    assert run_in_process(cfg, run) == 0
    events = read_events(run / "events.jsonl")
    metrics = [e["metrics"] for e in events if e["kind"] == "metrics" and e["stage"] == stage]
    assert [m["rewards/hangs_once/unscorable"] for m in metrics] == [chunk, 0, 0]   # the first chunk hung
    assert all(m["rewards/exact_match/unscorable"] == 0 and math.isfinite(m["loss"]) for m in metrics)
    assert metrics[0]["reward"] == 1.0     # over the scorable completions only
    assert {"reasoning/format_rate", "reasoning/accuracy", "reasoning/think_mean_tokens",
            "reasoning/think_max_tokens"} <= set(metrics[0])                     # `format`: a reasoning stage
    alerts = [e for e in events if e["kind"] == "alert" and e["code"] == "reward_unscorable"]
    assert len(alerts) == 1 and alerts[0]["level"] == "warning"
    assert alerts[0]["message"].startswith(f"hangs_once: {chunk} completions unscorable: TimeoutError: no result "
                                           f"within 1 s")
    row = [e for e in events if e["kind"] == "samples"][-1]["samples"][0]
    assert {"prompt", "completion", "reward", "rewards", "advantage", "length", "ended", "think", "answer",
            "think_tokens"} <= set(row)


def test_a_function_with_the_wrong_number_of_values_stops_the_run_with_exit_2(tmp_path, pretrained):  # noqa: F811
    path = write_functions(tmp_path)
    cfg = stage_config("grpo", pretrained, "grpo.steps=2", f'grpo.rewards=["exact_match", "{path}:short"]')
    run = tmp_path / "run"
    assert run_in_process(cfg, run) == 2
    end = [e for e in read_events(run / "events.jsonl") if e["kind"] == "run_end"][-1]
    assert end["state"] == "failed"
    assert end["error"] == "grpo.rewards[1]: reward function 'short' must return a list of 16 numbers, got 15 values"
