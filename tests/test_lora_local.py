"""`presets/lora-local.toml` on a local Qwen3-architecture model directory with the user's own JSONL
files and reward function: LoRA SFT -> DPO -> GRPO runs, and every stage's result is an adapter of
that directory that peft loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dswb.config import load_config
from dswb.engine.data.records.tokenizer import build_char_tokenizer
from tests.helpers import run_in_process

pytest.importorskip("peft", reason="adapters need peft (the [lora] extra, part of [test])")
PRESET = Path(__file__).parent.parent / "presets" / "lora-local.toml"
REWARD = '''def correct(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]
'''


def local_model(path: Path) -> Path:
    import torch
    import transformers

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = transformers.Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      head_dim=16, max_position_embeddings=64, tie_word_embeddings=False,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.slow
def test_the_lora_local_template_runs_sft_dpo_grpo_on_adapters_of_a_local_model(tmp_path):
    from peft import AutoPeftModelForCausalLM

    model = local_model(tmp_path / "my-model")
    sums = [(a, b) for a in range(10, 40) for b in range(10, 14)]
    sft = jsonl(tmp_path / "sft.jsonl", [{"prompt": f"{a}+{b}=", "completion": f"{a + b:03d}"} for a, b in sums])
    prefs = jsonl(tmp_path / "prefs.jsonl", [{"prompt": f"{a}+{b}=", "chosen": f"{a + b:03d}",
                                              "rejected": f"{a + b + 1:03d}"} for a, b in sums])
    prompts = jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"{a}+{b}=", "answer": f"{a + b:03d}"} for a, b in sums])
    (tmp_path / "my_rewards.py").write_text(REWARD)
    config = load_config(PRESET, [
        f'model.path="{model}"', "model.max_seq_len=32", f'sft.data=["{sft}"]', f'dpo.data=["{prefs}"]',
        f'grpo.data=["{prompts}"]', f'grpo.rewards=["{tmp_path / "my_rewards.py"}:correct"]', "run.threads=1",
        "sft.steps=4", "sft.grad_accum=1", "sft.warmup_steps=1", "dpo.steps=3", "dpo.grad_accum=1",
        "dpo.warmup_steps=1", "grpo.steps=2", "grpo.prompts_per_step=4", "grpo.group_size=4", "grpo.max_new_tokens=4",
        "grpo.warmup_steps=1", "batching.max_tokens=512", "eval.every=0", "eval.max_batches=1", "checkpoint.every=0"])
    run = tmp_path / "run"
    assert run_in_process(config, run) == 0
    for stage in ("sft", "dpo", "grpo"):
        final = run / "final" / stage
        info = json.loads((final / "dswb_stage.json").read_text())
        assert info["adapter"]["base"] == str(model) and info["adapter"]["r"] == 16
        assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(model.resolve())
    AutoPeftModelForCausalLM.from_pretrained(run / "final" / "grpo")
