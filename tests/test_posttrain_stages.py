"""The post-training stages on the real engine (tiny model, CPU): each runs, writes a final model
that transformers loads, reports its metrics, and resumes bitwise after a stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dswb.rundir import read_events, read_status
from tests.helpers import run_in_process, tiny_config
from tests.test_resume_faults import StopAtStep

pytestmark = pytest.mark.slow

STAGE_SETTINGS = {
    "sft": ["sft.steps=6", "sft.lr=1e-3", "sft.warmup_steps=1", "sft.grad_accum=1"],
    "rm": ["rm.steps=6", "rm.lr=3e-4", "rm.warmup_steps=1", "rm.batch_size=8"],
    "dpo": ["dpo.steps=6", "dpo.lr=1e-4", "dpo.warmup_steps=1", "dpo.batch_size=8"],
    "ppo": ["ppo.steps=4", "ppo.lr=1e-4", "ppo.prompts_per_step=8", "ppo.max_new_tokens=5", "ppo.epochs=2",
            "ppo.minibatches=2", "ppo.samples_every=2", 'ppo.rewards=["exact_match"]'],
    "grpo": ["grpo.steps=4", "grpo.lr=1e-4", "grpo.prompts_per_step=4", "grpo.group_size=4", "grpo.max_new_tokens=5",
             "grpo.minibatches=2", "grpo.beta=0.02", "grpo.samples_every=2", 'grpo.rewards=["exact_match"]'],
}


def stage_config(stage: str, init: Path | None = None, *extra: str):
    overrides = [f'run.stages=["{stage}"]', "checkpoint.every=2", *STAGE_SETTINGS[stage], *extra]
    if init is not None:
        overrides.append(f'{stage}.init="{init}"')
    return tiny_config(*overrides)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("base") / "run"
    assert run_in_process(tiny_config(), run_dir) == 0
    return run_dir / "final" / "pretrain"


def test_whole_pipeline_chains_stages_and_every_final_loads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    stages = ["pretrain", "sft", "rm", "dpo", "ppo", "grpo"]
    overrides = [f"run.stages={json.dumps(stages)}"] + [s for stage in stages[1:] for s in STAGE_SETTINGS[stage]]
    overrides += ['ppo.rewards=["exact_match", "rm"]', "ppo.reward_weights=[1.0, 0.1]"]
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config(*overrides), run_dir) == 0
    assert read_status(run_dir / "status.json")["state"] == "finished"
    for stage in stages:
        info = json.loads((run_dir / "final" / stage / "dswb_stage.json").read_text())
        assert info["stage"] == stage and info["prompt_format"] == "plain"
        if stage == "rm":
            model = AutoModelForSequenceClassification.from_pretrained(run_dir / "final" / stage, local_files_only=True)
            assert model.config.num_labels == 1
        else:
            AutoModelForCausalLM.from_pretrained(run_dir / "final" / stage, local_files_only=True)
    events = read_events(run_dir / "events.jsonl")
    starts = {e["stage"]: e for e in events if e["kind"] == "stage_start"}
    assert starts["sft"]["model"]["source"].endswith("final/pretrain")
    assert starts["ppo"]["model"]["value_source"].endswith("final/rm")         # value model from the run's RM
    assert starts["grpo"]["model"]["source"].endswith("final/ppo")             # the latest language model
    final_evals = {e["stage"]: e["metrics"] for e in events if e["kind"] == "eval" and
                   ("test_acc" in e["metrics"] or "test_pair_acc" in e["metrics"])}
    assert set(final_evals) == set(stages)
    assert {"test_pair_acc", "test_pair_acc_near", "test_pair_acc_random"} <= set(final_evals["rm"])
    metrics = {e["stage"]: e["metrics"] for e in events if e["kind"] == "metrics"}
    assert {"accuracy", "margin", "reward_chosen", "reward_rejected"} <= set(metrics["rm"])
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(metrics["dpo"])
    rl_names = {"reward", "reward_std", "kl", "entropy", "clip_ratio/low", "clip_ratio/high", "approx_kl",
                "ratio_mean", "ratio_max", "completions/mean_length", "completions/clipped_ratio", "eos_rate",
                "timing/generation_s", "timing/scoring_s", "timing/ref_logprobs_s", "timing/update_s"}
    assert rl_names | {"value_loss", "explained_variance", "rewards/exact_match/mean", "rewards/rm/mean"} <= set(metrics["ppo"])
    assert rl_names | {"frac_reward_zero_std"} <= set(metrics["grpo"])
    samples = [e for e in events if e["kind"] == "samples"]
    assert {e["stage"] for e in samples} == {"ppo", "grpo"}
    row = samples[-1]["samples"][0]
    assert {"prompt", "completion", "reward", "rewards", "advantage", "length", "ended"} <= set(row)
    assert len(samples[-1]["samples"]) <= 8


def _final_weights(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / stage / "model.safetensors"))


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "ppo", "grpo"])
def test_stop_then_resume_is_bitwise_equal(tmp_path, pretrained, stage):
    cfg = stage_config(stage, pretrained)
    straight = tmp_path / "straight"
    assert run_in_process(cfg, straight) == 0
    interrupted = tmp_path / "interrupted"
    assert run_in_process(cfg, interrupted, reporter=StopAtStep(interrupted, 3)) == 130
    assert read_status(interrupted / "status.json")["step"] == 3
    assert run_in_process(cfg, interrupted, resume=True) == 0
    a, b = _final_weights(straight, stage), _final_weights(interrupted, stage)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    def losses(run_dir):
        return {e["step"]: e["metrics"]["loss"] for e in read_events(run_dir / "events.jsonl", ("metrics",))}
    assert losses(straight) == losses(interrupted)


def test_grpo_skipping_zero_advantage_rows_gives_the_same_update(tmp_path, pretrained, monkeypatch):
    import dswb.engine.stages.grpo as grpo

    # a reward with variance inside groups even for an untrained model: some groups teach, some do not
    (tmp_path / "first_digit.py").write_text(
        "def reward(prompts, completions, **kw):\n"
        "    return [1.0 if int(p[0]) % 2 else float(c[:1] in '01') for p, c in zip(prompts, completions)]\n")
    cfg = stage_config("grpo", pretrained, "grpo.beta=0.0", "grpo.minibatches=1", "grpo.steps=3",
                       f'grpo.rewards=["{tmp_path}/first_digit.py:reward"]')
    assert run_in_process(cfg, tmp_path / "skip") == 0
    monkeypatch.setattr(grpo, "SKIP_ZERO_ADVANTAGE", False)
    assert run_in_process(cfg, tmp_path / "all") == 0
    skipped = [e["metrics"] for e in read_events(tmp_path / "skip" / "events.jsonl", ("metrics",))]
    full = [e["metrics"] for e in read_events(tmp_path / "all" / "events.jsonl", ("metrics",))]
    trained = sum(m["rows_trained"] for m in skipped)
    assert 0 < trained < sum(m["rows_trained"] for m in full)   # some rows taught, some were skipped
    a, b = _final_weights(tmp_path / "skip", "grpo"), _final_weights(tmp_path / "all", "grpo")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_chat_records_train_with_the_default_template_and_evaluate_as_chats(tmp_path, pretrained):
    from transformers import AutoTokenizer

    from dswb.engine.data.records.chat import DEFAULT_CHAT_TEMPLATE
    from dswb.engine.data.records.task import AdditionTask
    from dswb.engine.eval.saved_model import evaluate_model

    splits = AdditionTask(2, 0).split(200, 0, 0)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": e.prompt},
                                                     {"role": "assistant", "content": e.answer}]}) + "\n"
                            for e in splits.train))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": e.prompt}], "answer": e.answer}) + "\n"
                               for e in splits.train[:40]))
    cfg = tiny_config('run.stages=["sft", "grpo"]', f'sft.init="{pretrained}"', f'sft.data=["{data}"]',
                      *STAGE_SETTINGS["sft"], *STAGE_SETTINGS["grpo"], f'grpo.data=["{prompts}"]',
                      "eval.task_samples=0")
    run = tmp_path / "run"
    assert run_in_process(cfg, run) == 0
    for stage in ("sft", "grpo"):
        info = json.loads((run / "final" / stage / "dswb_stage.json").read_text())
        assert info["prompt_format"] == "chat"
        tok = AutoTokenizer.from_pretrained(run / "final" / stage, local_files_only=True)
        assert tok.chat_template == DEFAULT_CHAT_TEMPLATE and "<|assistant|>" in tok.get_vocab()
    starts = {e["stage"]: e for e in read_events(run / "events.jsonl", ("stage_start",))}
    assert starts["sft"]["data"]["prompt_format"] == "chat"
    result = evaluate_model(run / "final" / "grpo", n=10, device="cpu")
    assert result["kind"] == "causal_lm" and 0.0 <= result["exact_match"] <= 1.0
