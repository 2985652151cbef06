"""Every stage on adapters, on the real engine (tiny model, CPU): adapter-only checkpoints that resume
bitwise, final adapters that chain into the next stage, PPO and GRPO whose first ratio is exactly 1
with adapter dropout on, and the settings that cannot work refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dswb.rundir import read_events, read_status
from tests.helpers import run_in_process, tiny_config
from tests.test_posttrain_stages import STAGE_SETTINGS, pretrained, stage_config  # noqa: F401 - a fixture
from tests.test_resume_faults import StopAtStep

pytest.importorskip("peft", reason="adapters need peft (the [lora] extra, part of [test])")
pytestmark = pytest.mark.slow

LORA = ["lora.enabled=true", "lora.r=4", "lora.dropout=0.1"]


def adapter_weights(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / stage / "adapter_model.safetensors"))


def metrics(run_dir: Path, stage: str) -> dict[int, dict]:
    return {e["step"]: e["metrics"] for e in read_events(run_dir / "events.jsonl", ("metrics",)) if e["stage"] == stage}


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "ppo", "grpo"])
def test_adapter_checkpoints_hold_only_what_trains_and_resume_bitwise(tmp_path, pretrained, stage):  # noqa: F811
    cfg = stage_config(stage, pretrained, *LORA)
    straight = tmp_path / "straight"
    assert run_in_process(cfg, straight) == 0
    interrupted = tmp_path / "interrupted"
    assert run_in_process(cfg, interrupted, reporter=StopAtStep(interrupted, 3)) == 130
    ckpt = max((interrupted / "checkpoints" / stage).glob("step-*"))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["adapter_only"] and state["adapter"]["base"] == str(pretrained)
    saved = load_file(str(ckpt / "model.safetensors"))
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved)
    full = (pretrained / "model.safetensors").stat().st_size
    assert (ckpt / "model.safetensors").stat().st_size + (ckpt / "optimizer.pt").stat().st_size < full / 2
    assert run_in_process(cfg, interrupted, resume=True) == 0
    a, b = adapter_weights(straight, stage), adapter_weights(interrupted, stage)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert {s: m["loss"] for s, m in metrics(straight, stage).items()} == \
        {s: m["loss"] for s, m in metrics(interrupted, stage).items()}


def test_a_lora_pipeline_chains_adapters_and_every_final_loads(tmp_path, pretrained):  # noqa: F811
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    stages = ["sft", "rm", "dpo", "ppo", "grpo"]
    overrides = [s for stage in stages for s in STAGE_SETTINGS[stage]]
    overrides += [f"run.stages={json.dumps(stages)}", f'sft.init="{pretrained}"', *LORA,
                  'ppo.rewards=["exact_match", "rm"]', "ppo.reward_weights=[1.0, 0.1]", "grpo.lora.chain=merge",
                  "dpo.precompute_ref=false", "rm.lora.merge_final=true", "grpo.lora.merge_final=true"]
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config(*overrides), run_dir) == 0
    assert read_status(run_dir / "status.json")["state"] == "finished"
    final = run_dir / "final"
    for stage in stages:
        info = json.loads((final / stage / "dswb_stage.json").read_text())
        assert (final / stage / "adapter_config.json").is_file() and not (final / stage / "model.safetensors").exists()
        assert (final / stage / "merged" / "model.safetensors").is_file() == (stage in ("rm", "grpo"))
        assert info["adapter"]["r"] == 4
    # continued adapters stay adapters of the pretrained base, so peft's own loaders take them
    for stage in ("sft", "dpo", "ppo"):
        assert json.loads((final / stage / "dswb_stage.json").read_text())["adapter"]["base"] == str(pretrained)
        AutoPeftModelForCausalLM.from_pretrained(final / stage)
    AutoPeftModelForSequenceClassification.from_pretrained(final / "rm", num_labels=1)   # a scalar head
    AutoModelForSequenceClassification.from_pretrained(final / "rm" / "merged", local_files_only=True)
    AutoModelForCausalLM.from_pretrained(final / "grpo" / "merged", local_files_only=True)   # a merge of a merge
    grpo = json.loads((final / "grpo" / "dswb_stage.json").read_text())["adapter"]
    assert grpo["base"] == str(final / "ppo") and grpo["chain"] == "merge"     # a new adapter on the merged PPO
    events = read_events(run_dir / "events.jsonl")
    starts = {e["stage"]: e["model"] for e in events if e["kind"] == "stage_start"}
    assert all(0 < starts[s]["trainable"] < starts[s]["params"] / 5 for s in stages)
    assert all("adapter_norm" in m for m in metrics(run_dir, "sft").values())
    logs = " ".join(e.get("message", "") for e in events if e["kind"] == "log")
    assert "lora.dropout 0.1 is off in ppo" in logs and "value: LoRA r=4" in logs


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_with_adapter_dropout_the_first_ratio_is_exactly_one(tmp_path, pretrained, stage):  # noqa: F811
    # lr 0: every ratio of the stage is a first ratio (old and new log-probs of the same weights); GRPO
    # with a KL term trains every row (none is skipped for a zero advantage) and reuses its batch
    reuse = ["grpo.beta=0.04", "grpo.num_iterations=2"] if stage == "grpo" else ["ppo.epochs=2"]
    cfg = stage_config(stage, pretrained, *LORA, f"{stage}.lr=0.0", f"{stage}.steps=2", *reuse)
    assert run_in_process(cfg, tmp_path / "run") == 0
    for m in metrics(tmp_path / "run", stage).values():
        assert m["ratio_max"] == 1.0 and m["ratio_mean"] == 1.0 and m["approx_kl"] == 0.0


def test_continued_pretraining_trains_adapters_and_pretraining_from_scratch_trains_in_full(tmp_path, pretrained):  # noqa: F811
    cfg = tiny_config(f'model.path="{pretrained}"', "train.steps=4", *LORA)
    assert run_in_process(cfg, tmp_path / "continued") == 0
    assert (tmp_path / "continued" / "final" / "pretrain" / "adapter_config.json").is_file()
    assert run_in_process(tiny_config("train.steps=2", *LORA), tmp_path / "scratch") == 0
    assert (tmp_path / "scratch" / "final" / "pretrain" / "model.safetensors").is_file()
    logs = [e["message"] for e in read_events(tmp_path / "scratch" / "events.jsonl", ("log",))]
    assert any("starts from random weights: it trains every weight" in m for m in logs)


def test_settings_that_cannot_work_exit_2_with_one_line(tmp_path, pretrained, capsys):  # noqa: F811
    assert run_in_process(stage_config("sft", pretrained, *LORA, 'lora.target_modules=["qkv"]'), tmp_path / "a") == 2
    events = read_events(tmp_path / "a" / "events.jsonl")
    end = [e for e in events if e["kind"] == "run_end"][-1]
    assert end["state"] == "failed" and "sft.lora.target_modules: 'qkv' matches no linear layer" in end["error"]
    cfg = stage_config("sft", pretrained, *LORA)
    run = tmp_path / "b"
    assert run_in_process(cfg, run, reporter=StopAtStep(run, 2)) == 130
    changed = stage_config("sft", pretrained, "lora.enabled=false")
    assert run_in_process(changed, run, resume=True) == 2      # an adapter checkpoint into a full model
    end = [e for e in read_events(run / "events.jsonl") if e["kind"] == "run_end"][-1]
    assert "holds LoRA adapters only" in end["error"]
    assert list((run / "checkpoints" / "sft").glob("step-*"))  # nothing lost
