"""`dswb plan` with `[lora]`: adapters on a frozen (or NF4 / int8) base, the reference as the policy with
its adapter off, PPO's value model; Llama-3 8B and 70B planned from their config.json alone (no weights,
no torch). The trainable-parameter counts are the ones peft prints for the same models.

The frozen base is in the run's compute dtype, as the stages load it: bf16 on a GPU (`run.precision`
"auto" or "bf16": 2 bytes a parameter, no compute copies of it), fp32 with `run.precision = "fp32"`;
adapters and modules trained in full are fp32. With `lora.dropout > 0` (the default 0.05; PPO and GRPO switch
it off) each adapted layer's dropout keeps its mask, counted in the block's activations and checked against
what peft's layers save on a small Llama."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.config.adapters import LoraConfig
from dswb.engine.placement.memory import (MemoryModel, adapter_dropout_bytes_per_token, adapter_stage,
                                         block_activation_bytes_per_token, device_peak_bytes, int8_bytes,
                                         lora_memory_model, nf4_bytes, unit_bytes, working_set_bytes_per_token)
from dswb.engine.placement.report import trainable_params
from dswb.engine.placement.shapes import BLOCK, shape_from_hf_config, units

GB = 10**9
LLAMA_3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}
LLAMA_3_70B = {**LLAMA_3_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
               "num_attention_heads": 64}
BATCH = ["--set", "model.max_seq_len=2048", "--set", "batching.max_tokens=2048"]   # one 2048-token sequence
CKPT = ["--set", "parallel.activation_checkpointing=true"]
LORA = ["--set", "lora.enabled=true"]
FP32 = ["--set", "run.precision=fp32"]
NF4 = [*LORA, "--set", "lora.quantize=nf4"]


def model_dir(tmp_path, name: str, config: dict):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture
def llama_8b(tmp_path):
    return model_dir(tmp_path, "llama-3-8b", LLAMA_3_8B)


@pytest.fixture
def llama_70b(tmp_path):
    return model_dir(tmp_path, "llama-3-70b", LLAMA_3_70B)


def plan(model, *args: str, gpus: int = 1, memory: str = "80GB", tmp=None):
    """`dswb plan` on `gpus` devices of `memory` each (the --devices / --memory of tests/test_plan_cli.py);
    returns the result and, with `tmp`, the --json data."""
    out = [] if tmp is None else ["--json", str(tmp / "plan.json")]
    result = CliRunner().invoke(app, ["plan", "--set", f"model.path={model}", *BATCH, *args,
                                      "--devices", str(gpus), "--memory", memory, *out])
    assert "Traceback" not in result.output, result.output
    return result, (json.loads((tmp / "plan.json").read_text()) if tmp is not None else None)


def line(output: str, start: str) -> str:
    return next(x for x in output.splitlines() if x.startswith(start))


def shape_params(shape) -> int:
    return sum(u.params for u in units(shape))


# -- the adapters' size -----------------------------------------------------------------------------

@pytest.mark.parametrize("config,targets,r,per_block,expected", [
    (LLAMA_3_8B, ["all-linear"], 16, 7, 41_943_040),       # peft: trainable 41,943,040 || all 8,072,204,288
    (LLAMA_3_8B, ["q_proj", "v_proj"], 8, 2, 3_407_872),    # peft's default targets for Llama at r=8
    (LLAMA_3_70B, ["all-linear"], 16, 7, 207_093_760),     # peft: trainable 207,093,760 || all 70,760,800,256
])
def test_trainable_parameters_match_peft(config, targets, r, per_block, expected):
    shape = shape_from_hf_config(config)
    mm = lora_memory_model(MemoryModel(), LoraConfig(r=r, target_modules=targets), shape)
    assert trainable_params(shape, mm, units(shape)) == expected
    assert len(mm.lora_targets) == shape.layers * per_block


def test_value_model_trains_its_score_head_beside_the_adapters():
    # peft, LlamaForSequenceClassification (num_labels=1) with modules_to_save=["score"]: 41,947,136 trainable
    shape = shape_from_hf_config(LLAMA_3_8B).with_scalar_head()
    mm = lora_memory_model(MemoryModel(), LoraConfig(), shape, full=("score",))
    assert trainable_params(shape, mm, units(shape)) == 41_943_040 + 4096
    score = units(shape)[-1]
    # fp32 compute (MemoryModel's default): the frozen original and its trained copy, 4 + 4 bytes of weights,
    # 4 of grads, 8 of AdamW moments, no compute copy
    fp32 = unit_bytes(score, shape, mm)
    assert (fp32.weights, fp32.grads, fp32.optimizer, fp32.copies) == (4096 * 8, 4096 * 4, 4096 * 8, 0)
    # bf16: the frozen original in bf16 (2), the trained copy upcast to fp32 (4) and its bf16 compute copy (2)
    bf16_mm = lora_memory_model(MemoryModel(compute="bf16"), LoraConfig(), shape, full=("score",))
    bf16 = unit_bytes(score, shape, bf16_mm)
    assert (bf16.weights, bf16.grads, bf16.optimizer, bf16.copies) == (4096 * 6, 4096 * 4, 4096 * 8, 4096 * 2)


def test_quantized_sizes_match_bitsandbytes_storage():
    # bitsandbytes' quantize_4bit(nf4, compress_statistics=True) of a 14336 x 4096 weight: 29,360,128 bytes of
    # 4-bit pairs, 917,504 8-bit absmaxes, 14,336 bytes of fp32 second-level absmaxes, 1,088 of code tables
    assert nf4_bytes(14336 * 4096) == 29_360_128 + 917_504 + 14_336 + 1_088
    n = 8192 * 28672
    assert 4.126 < 8 * nf4_bytes(n) / n < 4.128
    assert int8_bytes(4096, 1024) == 4096 * 1024 + 4 * 1024      # Int8Params: int8 CB and an fp32 SCB per row


def test_frozen_base_has_no_gradients_or_optimizer_state():
    shape = shape_from_hf_config(LLAMA_3_8B)
    block = units(shape)[1]
    assert block.kind == BLOCK and block.params == 218_112_000
    full = unit_bytes(block, shape, MemoryModel(compute="bf16", tokens=2048))
    mm = lora_memory_model(MemoryModel(compute="bf16", tokens=2048), LoraConfig(dropout=0.0), shape)
    adapters = 41_943_040 // 32
    lora = unit_bytes(block, shape, mm)
    # a bf16 base: 2 bytes a parameter and no compute copies of it; the adapters fp32 with their bf16 copies
    assert lora.weights == block.params * 2 + adapters * 4 == 441_466_880
    assert (lora.grads, lora.optimizer) == (adapters * 4, adapters * 8)
    assert lora.copies == adapters * 2 and lora.activations == full.activations      # no dropout: as full training
    assert device_peak_bytes(shape, mm) == 0
    # fp32 compute: an fp32 base, no copies of anything
    mm32 = lora_memory_model(MemoryModel(compute="fp32", tokens=2048), LoraConfig(), shape)
    fp32 = unit_bytes(block, shape, mm32)
    assert (fp32.weights, fp32.copies) == (block.params * 4 + adapters * 4, 0)
    # NF4 projections; the block's two norms in bf16
    nf4_mm = lora_memory_model(mm, LoraConfig(quantize="nf4"), shape)
    nf4 = unit_bytes(block, shape, nf4_mm)
    assert nf4.weights == pytest.approx(block.matmul_params * 4.127 / 8 + 2 * 4096 * 2 + adapters * 4, rel=1e-3)
    assert nf4.copies == adapters * 2
    # the largest projection (gate/up/down, 14336 x 4096) dequantized to bf16, one at a time
    assert device_peak_bytes(shape, nf4_mm) == 14336 * 4096 * 2


# -- the adapters' dropout ----------------------------------------------------------------------------

SMALL_LLAMA = {"vocab_size": 300, "hidden_size": 256, "intermediate_size": 704, "num_attention_heads": 8,
               "num_key_value_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 128}


@pytest.mark.parametrize("targets", [["all-linear"], ["q_proj", "v_proj"], ["o_proj", "down_proj"]],
                         ids=["all-linear", "q-v", "o-down"])
@pytest.mark.parametrize("compute", ["bf16", "fp32"])
def test_dropout_bytes_match_what_peft_saves(compute, targets):
    """Measured with saved-tensor hooks (tests/test_parallel_memory.py) on a peft Llama, hidden 256, intermediate
    704, 2 layers, r=16, dropout 0 against 0.05, 384 tokens, block 1 (on the CPU), bytes a token:

                         measured extra   modelled extra   measured total   modelled total
    bf16 all-linear          8,960            8,960            21,512           22,824   4 x (6h + i)
    bf16 q, v                2,048            2,048            10,984           15,912   4 x 2h
    bf16 o, down             3,840            3,840            13,704           17,704   4 x (h + i)
    fp32 all-linear         13,056           13,056            31,976           33,576   4 x (10h + i)
    fp32 q, v                3,072            3,072            17,832           23,592   4 x 3h
    fp32 o, down             4,864            4,864            21,480           25,384   4 x (2h + i)

    The modelled total is the full-training count (adapters on a frozen base save less) plus the extra."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft", reason="adapters need peft (the [lora] extra, part of [test])")
    from test_parallel_memory import saved_bytes
    from transformers import LlamaConfig, LlamaForCausalLM

    from dswb.engine.adapters.lora import apply_lora

    config = LlamaConfig(attn_implementation="sdpa", **SMALL_LLAMA)
    shape = shape_from_hf_config(config.to_dict())
    ids = torch.randint(0, 300, (4, 96), generator=torch.Generator().manual_seed(0))
    tokens = ids.numel()
    measured = {}
    for dropout in (0.0, 0.05):
        torch.manual_seed(0)
        base = LlamaForCausalLM(config).to(torch.bfloat16 if compute == "bf16" else torch.float32)
        model = apply_lora(base, LoraConfig(r=16, dropout=dropout, target_modules=targets), "policy", "lora").train()
        measured[dropout] = saved_bytes(model.base_model.model, ids, amp=compute == "bf16")["block1"][0]
    mm = lora_memory_model(MemoryModel(compute=compute, tokens=tokens, seq_len=96),
                           LoraConfig(r=16, dropout=0.05, target_modules=targets), shape)
    block = units(shape)[2]
    modelled = adapter_dropout_bytes_per_token(block, shape, mm)
    assert modelled > 0
    assert (measured[0.05] - measured[0.0]) / tokens == pytest.approx(modelled, rel=0.05)
    # the whole block: never below what it saves
    total = unit_bytes(block, shape, mm).activations
    assert total == tokens * (block_activation_bytes_per_token(shape, compute) + modelled)
    assert measured[0.05] <= total


def test_dropout_on_llama_3_8b():
    shape = shape_from_hf_config(LLAMA_3_8B)
    h, i = 4096, 14336
    block, head = units(shape)[1], units(shape)[-1]
    mm = lora_memory_model(MemoryModel(compute="bf16", tokens=2048), LoraConfig(), shape)   # dropout 0.05
    no_dropout = lora_memory_model(MemoryModel(compute="bf16", tokens=2048), LoraConfig(dropout=0.0), shape)
    per_token = adapter_dropout_bytes_per_token(block, shape, mm)
    # q, k, v, gate and up read h, o the attention width (h), down i: 155,648 bytes a token, +64% of a block
    assert per_token == 4 * (6 * h + i) == 155_648
    assert block_activation_bytes_per_token(shape, "bf16") == 241_800 and round(per_token / 241_800, 2) == 0.64
    with_dropout, without = unit_bytes(block, shape, mm), unit_bytes(block, shape, no_dropout)
    assert with_dropout.activations == without.activations + 2048 * per_token
    assert adapter_dropout_bytes_per_token(head, shape, mm) == 0              # all-linear leaves the head alone
    # only the targeted layers pay: q and v read h each
    qv = lora_memory_model(MemoryModel(compute="bf16"), LoraConfig(target_modules=["q_proj", "v_proj"]), shape)
    assert adapter_dropout_bytes_per_token(block, shape, qv) == 4 * 2 * h
    # an adapted head's dropout keeps its mask too
    lm = lora_memory_model(MemoryModel(compute="bf16"), LoraConfig(target_modules=["all-linear", "lm_head"]), shape)
    assert adapter_dropout_bytes_per_token(head, shape, lm) == 4 * h
    # checkpointing: a block keeps its input alone, the recomputed block pays the dropout in the device's peak
    ckpt = replace(mm, activation_checkpointing=True)
    ckpt_off = replace(no_dropout, activation_checkpointing=True)
    assert unit_bytes(block, shape, ckpt).activations == unit_bytes(block, shape, ckpt_off).activations == 2048 * 4 * h
    assert device_peak_bytes(shape, ckpt) == device_peak_bytes(shape, ckpt_off) + 2048 * per_token


@pytest.mark.parametrize("stage,dropout", [("sft", 0.05), ("rm", 0.05), ("dpo", 0.05), ("pretrain", 0.05),
                                           ("ppo", 0.0), ("grpo", 0.0)])
def test_ppo_and_grpo_train_without_dropout(llama_8b, stage, dropout):
    from dswb.config.load import load_config

    config = load_config(None, [f"model.path={llama_8b}", "lora.enabled=true"])
    shape = shape_from_hf_config(LLAMA_3_8B)
    _, trained, roles = adapter_stage(config, stage, shape, MemoryModel(compute="bf16"))
    assert trained.lora_dropout == dropout
    assert all(r.memory.lora_dropout == dropout for r in roles if r.memory.lora_r)   # PPO's value adapter
    block = units(shape)[1]
    assert (adapter_dropout_bytes_per_token(block, shape, trained) > 0) == (dropout > 0)


# -- the four questions ---------------------------------------------------------------------------------

def test_qlora_sft_of_8b_fits_one_24gb_gpu(llama_8b, tmp_path):
    result, data = plan(llama_8b, "--stage", "sft", *NF4, *CKPT, memory="24GB", tmp=tmp_path)
    assert result.exit_code == 0, result.output
    assert line(result.output, "lora:") == ("lora: adapters r=16 on 224 modules: 41,943,040 trainable parameters "
                                            "(41.9 M, 0.52% of 8.07 B); frozen base in NF4 (4.127 bits a weight), "
                                            "embedding, norms and head in bf16: 5.3 GiB")
    assert "fits: 11.4 GiB on 1 devices; the fullest, cuda:0, is at 51% of 22.4 GiB" in result.output
    lora = data["lora"]
    assert (lora["trainable_params"], lora["quantize"], lora["base_dtype"]) == (41_943_040, "nf4", "bf16")
    # NF4 blocks, bf16 embedding, head and norms; nothing else of the base
    shape = shape_from_hf_config(LLAMA_3_8B)
    matmul = sum(u.matmul_params for u in units(shape) if u.kind == BLOCK)
    assert lora["base_weight_bytes"] == pytest.approx(matmul * 4.127 / 8 + (shape_params(shape) - matmul) * 2,
                                                      rel=1e-3)
    (device,) = data["devices"]
    assert device["weights"] == lora["base_weight_bytes"] + 41_943_040 * 4 and device["copies"] == 41_943_040 * 2
    assert data["total_bytes"] < 0.55 * 24 * GB


def test_qlora_needs_a_modest_batch_on_24gb(llama_8b):
    result, _ = plan(llama_8b, "--stage", "sft", *NF4, "--set", "batching.max_tokens=8192", memory="24GB")
    assert result.exit_code == 1, result.output
    assert "it would need, with activation checkpointing" in result.output
    tokens = int(line(result.output, "it fits with at most").split()[5].replace(",", ""))
    assert 1000 < tokens < 2048
    fits, _ = plan(llama_8b, "--stage", "sft", *NF4, "--set", f"batching.max_tokens={tokens}", memory="24GB")
    over, _ = plan(llama_8b, "--stage", "sft", *NF4, "--set", f"batching.max_tokens={tokens + 1}", memory="24GB")
    assert (fits.exit_code, over.exit_code) == (0, 1)


def test_lora_sft_of_8b_on_a_bf16_base_fits_one_80gb_gpu(llama_8b, tmp_path):
    result, data = plan(llama_8b, "--stage", "sft", *LORA, tmp=tmp_path)
    assert result.exit_code == 0, result.output
    assert line(result.output, "lora:").endswith("; frozen base in bf16: 15.0 GiB")
    # 18.3 GiB of activations without the adapters' dropout, 27.8 GiB with it (lora.dropout = 0.05)
    assert "fits: 43.4 GiB on 1 devices; the fullest, cuda:0, is at 58% of 74.5 GiB" in result.output
    (device,) = data["devices"]
    shape = shape_from_hf_config(LLAMA_3_8B)
    assert data["lora"]["base_weight_bytes"] == shape_params(shape) * 2 and data["lora"]["base_dtype"] == "bf16"
    assert device["weights"] == shape_params(shape) * 2 + 41_943_040 * 4
    assert device["grads"] == 41_943_040 * 4 and device["optimizer"] == 41_943_040 * 8
    assert device["copies"] == 41_943_040 * 2          # the adapters' bf16 copies; the base computes in bf16
    assert 0.5 < device["total"] / (80 * GB) < 0.6
    assert data["lora"]["dropout"] == 0.05
    shape_blocks = [u for u in units(shape) if u.kind == BLOCK]
    dropout = 2048 * 4 * (6 * 4096 + 14336) * len(shape_blocks)       # 155,648 bytes a token and block
    off, off_data = plan(llama_8b, "--stage", "sft", *LORA, "--set", "lora.dropout=0", tmp=tmp_path)
    assert "fits: 33.9 GiB on 1 devices; the fullest, cuda:0, is at 46% of 74.5 GiB" in off.output
    assert device["activations"] == off_data["devices"][0]["activations"] + dropout


def test_lora_on_an_fp32_run_keeps_an_fp32_base(llama_8b, tmp_path):
    result, data = plan(llama_8b, "--stage", "sft", *LORA, *FP32, tmp=tmp_path)
    assert result.exit_code == 0, result.output
    assert line(result.output, "lora:").endswith("; frozen base in fp32: 29.9 GiB")
    (device,) = data["devices"]
    shape = shape_from_hf_config(LLAMA_3_8B)
    assert device["weights"] == shape_params(shape) * 4 + 41_943_040 * 4 and device["copies"] == 0
    assert data["lora"]["base_dtype"] == "fp32" and device["total"] < 80 * GB


def test_grpo_with_lora_keeps_no_second_copy_for_the_reference(llama_8b, tmp_path):
    result, data = plan(llama_8b, "--stage", "grpo", *LORA, "--set", "grpo.beta=0.04",
                        "--set", 'grpo.rewards=["exact_match"]', tmp=tmp_path)
    assert result.exit_code == 0, result.output
    assert "reference: the policy, adapter off" in result.output
    (ref,) = data["roles"]
    shape = shape_from_hf_config(LLAMA_3_8B)
    working_set = 2048 * working_set_bytes_per_token(shape, "bf16") + 2048 * 128256 * 2   # a block, the logits
    assert (ref["weights"], ref["grads"], ref["optimizer"], ref["total"]) == (0, 0, 0, working_set)
    assert data["total_bytes"] == data["devices"][0]["total"] + working_set < 0.5 * 80 * GB
    assert "fits: 34.6 GiB on 1 devices" in result.output
    beta0, data0 = plan(llama_8b, "--stage", "grpo", *LORA, "--set", 'grpo.rewards=["exact_match"]', tmp=tmp_path)
    assert "roles" not in data0 and "reference:" not in beta0.output     # beta = 0: no reference at all


def test_full_fine_tuning_of_8b_does_not_fit_one_24gb_gpu(llama_8b, tmp_path):
    result, data = plan(llama_8b, "--stage", "sft", memory="24GB", tmp=tmp_path)
    assert result.exit_code == 1, result.output
    assert "lora:" not in result.output and "does not fit: needs 151.9 GiB" in result.output
    shape = shape_from_hf_config(LLAMA_3_8B)
    assert data["devices"][0]["optimizer"] == shape_params(shape) * 8 and "lora" not in data
    # 16 bytes a parameter before activations and copies: no batch makes it fit
    assert data["total_bytes"] > shape_params(shape) * 16 > 24 * GB


# -- 70B, PPO's value model, and what stays as it was ---------------------------------------------------

def test_70b_qlora_fits_one_80gb_gpu_and_a_bf16_base_does_not(llama_70b, tmp_path):
    qlora, data = plan(llama_70b, "--stage", "sft", *NF4, *CKPT, tmp=tmp_path)
    assert qlora.exit_code == 0, qlora.output
    assert data["lora"]["trainable_params"] == 207_093_760 and data["total_bytes"] < 80 * GB
    assert "fits: 50.8 GiB on 1 devices" in qlora.output
    shape = shape_from_hf_config(LLAMA_3_70B)
    lora, bf16 = plan(llama_70b, "--stage", "sft", *LORA, tmp=tmp_path)
    assert lora.exit_code == 1
    # 141 GB of bf16 weights alone are more than the card
    assert bf16["lora"]["base_weight_bytes"] == shape_params(shape) * 2 > 80 * GB
    assert line(lora.output, "lora:").endswith("; frozen base in bf16: 131.4 GiB")
    assert line(lora.output, "it would need") == ("it would need, with activation checkpointing 145.0 GiB; with "
                                                  "lora.quantize = 'nf4' 165.0 GiB; with both 50.8 GiB (fits)")
    assert "it fits on" not in lora.output                                # adapters are not split over devices
    # QLoRA without checkpointing: only a short micro-batch fits
    short, _ = plan(llama_70b, "--stage", "sft", *NF4)
    assert short.exit_code == 1
    assert line(short.output, "it fits with at most") == ("it fits with at most 557 tokens per micro-batch "
                                                          "(batching.max_tokens)")


@pytest.mark.parametrize("value,trainable", [("adapter", 41_943_040 + 4096), ("full", None)])
def test_ppo_value_model_is_its_own_backbone(llama_8b, tmp_path, value, trainable):
    result, data = plan(llama_8b, "--stage", "ppo", *NF4, *CKPT, "--set", f"lora.value={value}",
                        "--set", 'ppo.rewards=["exact_match"]', memory="192GB", tmp=tmp_path)
    assert result.exit_code == 0, result.output
    ref, val = data["roles"]
    assert (ref["role"], ref["weights"], val["role"]) == ("reference", 0, "value")
    backbone = shape_params(shape_from_hf_config(LLAMA_3_8B).with_scalar_head())
    if value == "adapter":
        assert f"value: its own adapter, {trainable:,} trainable" in result.output
        assert val["optimizer"] == trainable * 8 and val["weights"] < backbone      # a frozen NF4 backbone
    else:
        assert "value: trained in full" in result.output
        assert (val["weights"], val["grads"], val["optimizer"]) == (backbone * 4, backbone * 4, backbone * 8)


def test_lora_is_planned_on_one_device_of_several(llama_8b, tmp_path):
    result, data = plan(llama_8b, "--stage", "sft", *NF4, gpus=4, tmp=tmp_path)
    assert result.exit_code == 0, result.output
    assert "planned on cuda:0 alone" in result.output and len(data["devices"]) == 1


def test_dpo_reference_is_counted_only_when_not_precomputed(llama_8b, tmp_path):
    _, pre = plan(llama_8b, "--stage", "dpo", *LORA, tmp=tmp_path)
    _, live = plan(llama_8b, "--stage", "dpo", *LORA, "--set", "dpo.precompute_ref=false", tmp=tmp_path)
    assert "roles" not in pre and [r["role"] for r in live["roles"]] == ["reference"]


def test_without_lora_the_plan_is_the_one_it_was(llama_8b):
    base, _ = plan(llama_8b, memory="24GB")
    assert plan(llama_8b, "--stage", "grpo", memory="24GB")[0].output == base.output
    assert "lora:" not in base.output and "reference:" not in base.output
    # lora on, but pretraining from random weights trains every weight: the same plan, one line more
    size = CliRunner().invoke(app, ["plan", "--set", "model.size=base", *LORA, "--devices", "1", "--memory", "24GB"])
    plain = CliRunner().invoke(app, ["plan", "--set", "model.size=base", "--devices", "1", "--memory", "24GB"])
    extra = [x for x in size.output.splitlines() if x not in plain.output.splitlines()]
    assert extra == ["lora: pretrain starts from random weights and trains every weight"], size.output


@pytest.mark.parametrize("args,needle", [
    (["--stage", "sft", *LORA, "--set", 'sft.lora.target_modules=["qkv_proj"]'],
     "sft.lora.target_modules: 'qkv_proj' matches no linear layer"),
    (["--stage", "distill"], "--stage: 'distill' is not one of"),
])
def test_user_errors_exit_2(llama_8b, args, needle):
    result, _ = plan(llama_8b, *args)
    assert result.exit_code == 2 and needle in result.output, result.output


def test_stage_tables_change_one_stage_only(llama_8b, tmp_path):
    _, sft = plan(llama_8b, "--stage", "sft", *LORA, "--set", "sft.lora.r=64", tmp=tmp_path)
    _, grpo = plan(llama_8b, "--stage", "grpo", *LORA, "--set", "sft.lora.r=64",
                   "--set", 'grpo.rewards=["exact_match"]', tmp=tmp_path)
    assert (sft["lora"]["r"], grpo["lora"]["r"]) == (64, 16)
    assert (sft["lora"]["trainable_params"], grpo["lora"]["trainable_params"]) == (4 * 41_943_040, 41_943_040)
