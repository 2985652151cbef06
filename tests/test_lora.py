"""LoRA and QLoRA on real transformers models (tiny, CPU): targets, the reference without a second
copy, final adapters in peft's format (merged = unmerged on every dense family), QLoRA's quantized
base, and the base's fingerprint."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dswb.config.adapters import LoraConfig
from dswb.engine.adapters.lora import apply_lora, disable_dropout, parameter_counts, resolve_targets
from dswb.engine.adapters.reference import AdapterReference
from dswb.engine.checkpoint.final import save_final, write_merged
from dswb.engine.data.records.tokenizer import build_char_tokenizer
from dswb.engine.model.fingerprint import model_fingerprint
from dswb.engine.model.load import adapter_base, load_causal_lm, load_scalar_model
from dswb.errors import UserError

peft = pytest.importorskip("peft", reason="adapters need peft (the [lora] extra, part of [test])")

SETTINGS = LoraConfig(enabled=True, r=4, alpha=8.0, dropout=0.0)
FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]


def tiny_config(family: str, vocab: int):
    import transformers

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[family]
    return cls(**common)


def save_base(tmp_path: Path, family: str = "llama") -> tuple[Path, object]:
    """A random tiny model of `family` with the task's tokenizer, saved as a model directory."""
    from transformers import AutoModelForCausalLM

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer)))
    base = tmp_path / f"base-{family}"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base, tokenizer


def trained_adapter(model: torch.nn.Module, settings: LoraConfig = SETTINGS, role: str = "policy"):
    """`model` with adapters whose B matrices are not zero (as after training)."""
    peft_model = apply_lora(model, settings, role, "lora")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return peft_model


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])


def save_adapter_final(path: Path, peft_model, tokenizer, base: Path, stage: str = "sft") -> Path:
    return save_final(path, peft_model, tokenizer, {"stage": stage, "adapter": {"base": str(base),
                                                                                 "base_fingerprint": model_fingerprint(base)}})


@pytest.mark.parametrize("family", FAMILIES)
def test_final_adapter_loads_with_peft_and_merged_logits_equal_adapter_logits(tmp_path, family):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    base, tokenizer = save_base(tmp_path, family)
    model = trained_adapter(load_causal_lm(base, "test"))
    expected = logits(model, IDS)
    final = save_adapter_final(tmp_path / "final" / "sft", model, tokenizer, base)
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())

    fresh_base = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    assert not torch.allclose(logits(fresh_base, IDS), expected, atol=1e-3)     # the adapter does something
    assert torch.allclose(logits(PeftModel.from_pretrained(fresh_base, final), IDS), expected, atol=1e-6)
    assert torch.allclose(logits(AutoPeftModelForCausalLM.from_pretrained(final), IDS), expected, atol=1e-6)
    assert torch.allclose(logits(load_causal_lm(final, "test"), IDS), expected, atol=1e-5)   # dswb's loader merges

    merged = write_merged(final, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(merged, local_files_only=True)
    assert not any("lora" in k for k in plain.state_dict())
    assert torch.allclose(logits(plain, IDS), expected, atol=1e-5)


def test_the_reference_is_the_base_with_the_adapter_off_exactly(tmp_path):
    base, _ = save_base(tmp_path)
    plain = load_causal_lm(base, "test")
    expected = logits(plain, IDS)
    model = trained_adapter(load_causal_lm(base, "test"))
    model.train()
    reference = AdapterReference(model)
    assert torch.equal(reference(input_ids=IDS).logits, expected)
    assert model.training                                   # the reference pass restores the mode
    assert not torch.allclose(logits(model, IDS), expected, atol=1e-3)


def test_a_continued_adapter_keeps_its_start_as_a_frozen_second_adapter(tmp_path):
    base, tokenizer = save_base(tmp_path)
    start = save_adapter_final(tmp_path / "sft", trained_adapter(load_causal_lm(base, "test")), tokenizer, base)
    at_start = logits(load_causal_lm(start, "test", merge=False), IDS)

    model = load_causal_lm(start, "test", merge=False)      # the adapter trains on
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    reference = AdapterReference(model, continued_from=start)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1)                                  # "training" moves the trained adapter only
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert torch.equal(reference(input_ids=IDS).logits, at_start)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable   # flags restored
    assert not torch.allclose(logits(model, IDS), at_start, atol=1e-3)


def test_all_linear_leaves_the_output_head_and_unknown_targets_are_user_errors(tmp_path):
    base, _ = save_base(tmp_path)
    model = load_causal_lm(base, "test")
    chosen = resolve_targets(model, ["all-linear"], "lora.target_modules")
    assert "lm_head" not in chosen and len(chosen) == 2 * 7
    assert resolve_targets(model, ["q_proj", "*.mlp.down_proj"], "x") == (
        [f"model.layers.{i}.self_attn.q_proj" for i in range(2)] + [f"model.layers.{i}.mlp.down_proj" for i in range(2)])
    with pytest.raises(UserError, match="'qkv' matches no linear layer of LlamaForCausalLM"):
        resolve_targets(model, ["qkv"], "sft.lora.target_modules")
    with pytest.raises(UserError, match="modules_to_save: 'head' is no module"):
        apply_lora(model, replace(SETTINGS, modules_to_save=["head"]), "policy", "sft.lora")


def test_a_reward_model_trains_its_score_head_in_full_beside_the_adapters(tmp_path):
    base, _ = save_base(tmp_path)
    torch.manual_seed(0)
    model = apply_lora(load_scalar_model(base, "test"), SETTINGS, "reward", "rm.lora")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n and "modules_to_save" in n for n in trainable)
    assert all("lora_" in n or "score" in n for n in trainable)
    count, total = parameter_counts(model)
    assert 0 < count < total / 5


def test_ppo_and_grpo_policies_run_without_dropout_so_the_first_ratio_is_exactly_one(tmp_path):
    from dswb.engine.rl.rollout import sequence_logprobs

    base, _ = save_base(tmp_path)
    model = trained_adapter(load_causal_lm(base, "test"), replace(SETTINGS, dropout=0.3)).train()
    prompt, completion = [[1, 5, 6]], torch.tensor([[7, 8, 9, 10]])
    mask = torch.ones_like(completion)

    def ratio() -> torch.Tensor:
        with torch.no_grad():
            old, _ = sequence_logprobs(model, prompt, completion, mask)
        new, _ = sequence_logprobs(model, prompt, completion, mask)
        return torch.exp(new - old)

    torch.manual_seed(0)
    assert not torch.equal(ratio(), torch.ones(1, 4))       # dropout on: sampled and trained policies differ
    assert disable_dropout(model) > 0
    assert torch.equal(ratio(), torch.ones(1, 4))


def test_qlora_nf4_trains_on_the_cpu_and_merges_onto_the_full_precision_base(tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the [qlora] extra, part of [test])")
    base, tokenizer = save_base(tmp_path)
    model = load_causal_lm(base, "test", quantize="nf4", device=torch.device("cpu"))
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    model = trained_adapter(model)
    model.train()
    out = model(input_ids=IDS, labels=IDS)
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    quantized = logits(model, IDS)
    final = save_adapter_final(tmp_path / "final" / "sft", model, tokenizer, base)
    merged = logits(load_causal_lm(final, "test"), IDS)            # onto the full-precision base
    full_precision = logits(peft.PeftModel.from_pretrained(load_causal_lm(base, "test"), str(final)), IDS)
    assert torch.allclose(merged, full_precision, atol=1e-5)
    # NF4 rounds the base weights: the merged model's logits differ from the quantized model's it trained
    # with by about the base's own quantization error (measured: max 0.068 vs 0.042 for the base alone,
    # while the adapter moves the logits by 0.25), so the tolerance is twice that error.
    base_error = (logits(load_causal_lm(base, "t", quantize="nf4", device=torch.device("cpu")), IDS)
                  - logits(load_causal_lm(base, "t"), IDS)).abs().max()
    assert 0 < (merged - quantized).abs().max() < 2 * base_error < (merged - logits(load_causal_lm(base, "t"), IDS)).abs().max()


def test_an_adapter_refuses_a_base_that_moved_or_changed(tmp_path):
    base, tokenizer = save_base(tmp_path)
    final = save_adapter_final(tmp_path / "final" / "sft", trained_adapter(load_causal_lm(base, "test")), tokenizer,
                               base)
    assert adapter_base(final, "sft.init") == base
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)                                     # another model of the same shapes
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="changed since the adapter"):
        load_causal_lm(final, "sft.init")
    base.rename(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="not a model directory here"):
        load_causal_lm(final, "sft.init")


def test_mixture_of_experts_experts_stay_out_of_all_linear_and_cannot_be_targeted():
    import transformers

    config = transformers.Qwen3MoeConfig(vocab_size=16, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         num_experts=4, num_experts_per_tok=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    chosen = resolve_targets(model, ["all-linear"], "lora.target_modules")
    assert chosen and not any("expert" in n or n.endswith(".gate") for n in chosen)     # routers stay frozen too
    with pytest.raises(UserError, match="'experts' reaches Mixture-of-Experts experts"):
        resolve_targets(model, ["experts"], "lora.target_modules")
