"""User errors of the post-training stages: config checks before anything starts, bad data files,
`--stage`, and `dswb eval`: one line naming the place, exit code 2."""

from __future__ import annotations

import json

import pytest

from dswb.config import load_config
from dswb.errors import UserError
from tests.helpers import run_in_process, tiny_config
from tests.test_cli_errors import assert_one_line_error, dswb


@pytest.mark.parametrize("overrides, needle", [
    (['run.stages=["sft","pretrain"]'], "run.stages: stages must keep the pipeline order"),
    (['run.stages=["sft","sft"]'], "'sft' appears twice"),
    (['run.stages=["pretrain","ppo"]'], "ppo.rewards: PPO needs at least one reward source"),
    (['run.stages=["pretrain","grpo"]', 'grpo.rewards=["rm"]'], "'rm' is this run's reward model, but the rm stage"),
    (['run.stages=["pretrain","grpo"]', 'grpo.rewards=["oops"]'], "grpo.rewards[0]: 'oops'"),
    (['run.stages=["pretrain","grpo"]', 'grpo.rewards=["exact_match"]', "grpo.reward_weights=[1.0,2.0]"],
     "2 weights for 1 reward sources"),
    (['run.stages=["pretrain","grpo"]', 'grpo.rewards=["exact_match"]', "grpo.temperature=0"], "no signal"),
    (['run.stages=["pretrain","grpo"]', 'grpo.rewards=["exact_match"]', "grpo.epsilon_high=0.1"],
     "grpo.epsilon_high (0.1) must be >= grpo.epsilon"),
    (['run.stages=["pretrain","dpo"]', 'dpo.loss="ipo"', "dpo.label_smoothing=0.1"], "sigmoid and robust losses"),
    (['run.stages=["pretrain","grpo"]', 'grpo.loss_type="mean"'], "grpo.loss_type: 'mean' is not one of"),
    (["grpo.lossType=1"], "unknown key 'grpo.lossType' (did you mean 'grpo.loss_type'?)"),
    (['run.stages=["sft"]', 'data.source="files"', 'data.paths=["x.txt"]'], "sft.data: give this stage's JSONL"),
])
def test_config_errors_name_the_key(overrides, needle):
    with pytest.raises(UserError) as err:
        load_config(None, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_stage_that_needs_a_starting_model(tmp_path):
    cfg = tiny_config('run.stages=["rm"]')
    assert run_in_process(cfg, tmp_path / "run") == 2
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "rm.init: nothing to start rm from" in status["error"]


def test_bad_stage_data_file_names_file_and_line(tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "1+1=", "completion": "002"}\n{"prompt": "2+2="}\n')
    cfg = tiny_config('run.stages=["sft"]', f'sft.data=["{data}"]', "sft.steps=2")
    assert run_in_process(cfg, tmp_path / "run") == 2
    error = json.loads((tmp_path / "run" / "status.json").read_text())["error"]
    assert f"{data}:2: missing field 'completion'" in error


def test_unknown_stage_flag_and_eval_of_nothing(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[run]\nstages = ["pretrain", "sft"]\n')
    assert_one_line_error(dswb("run", str(preset), "--stage", "grpo", "--runs-root", str(tmp_path / "runs")),
                          "--stage grpo: not a stage of this preset")
    assert not (tmp_path / "runs").exists()
    assert_one_line_error(dswb("eval", str(tmp_path / "nowhere"), "--runs-root", str(tmp_path)), "no run")
    empty = tmp_path / "runs" / "r1"
    empty.mkdir(parents=True)
    (empty / "config.toml").write_text("")
    assert_one_line_error(dswb("eval", str(empty) + ":sft"), "has no final 'sft' model")
