"""The planner on Mixture-of-Experts models (moe-tiny, DeepSeek-V3, Qwen3-MoE, Mixtral): exact total
parameters per module against the built transformers model, active parameters per token, every expert's
memory, MLA's count, the layer split, the report and `dswb plan`."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config
from transformers import AutoModelForCausalLM, DeepseekV3Config, MixtralConfig, Qwen3MoeConfig
from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.engine.placement.memory import (MemoryModel, block_activation_bytes_per_token, frozen_weight_bytes,
                                          int8_bytes, kv_cache_bytes_per_token, unit_bytes, unit_flops)
from dswb.engine.placement.planner import DeviceSpec, plan_layers
from dswb.engine.placement.report import model_line, moe_line, plan_dict, plan_text
from dswb.engine.placement.shapes import (BLOCK, MOE_TINY, TASK_VOCAB, active_matmul_params, active_params,
                                          block_linears, lora_targets, shape_from_config, shape_from_hf_config,
                                          shape_from_model_dir, shape_from_size, total_params, units)
from dswb.errors import UserError

DEEPSEEK = DeepseekV3Config(vocab_size=101, hidden_size=64, intermediate_size=96, moe_intermediate_size=16,
                            num_hidden_layers=3, num_attention_heads=4, n_shared_experts=2, n_routed_experts=4,
                            num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1, q_lora_rank=None,
                            kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=12,
                            attention_bias=True, tie_word_embeddings=True)
QWEN3_MOE = Qwen3MoeConfig(vocab_size=101, hidden_size=64, intermediate_size=96, moe_intermediate_size=24,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, num_experts=8,
                           num_experts_per_tok=2, decoder_sparse_step=2, mlp_only_layers=[3], head_dim=20,
                           attention_bias=True)
MIXTRAL = MixtralConfig(vocab_size=101, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
# model.size = "moe-tiny" with the task's 16-token vocabulary: every parameter, and what a token runs.
MOE_TINY_TOTAL, MOE_TINY_ACTIVE = 270_656, 160_064


def built(config):
    with torch.device("meta"):  # shapes only, nothing allocated
        return AutoModelForCausalLM.from_config(config)


def matmul_weights(module: torch.nn.Module) -> int:
    """Weights in matrix multiplies: linear layers, 3-D experts and routers (`...gate.weight`)."""
    linears = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
    return linears + sum(p.numel() for n, p in module.named_parameters() if p.dim() == 3 or n.endswith("gate.weight"))


def check_units(model, shape) -> None:
    assert total_params(shape) == sum(p.numel() for p in model.parameters())
    seen: set[int] = set()
    for unit in units(shape):
        module = model.get_submodule(unit.name)
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        assert unit.params == sum(p.numel() for p in params), unit.name
        assert unit.matmul_params == matmul_weights(module), unit.name
        assert unit.routed_params == sum(p.numel() for p in module.parameters() if p.dim() == 3), unit.name


def test_moe_tiny_mirrors_the_builder_and_counts_the_built_model_exactly():
    from dswb.engine.model.build import MOE_TINY as BUILDER_MOE_TINY
    from dswb.engine.model.build import moe_tiny_config

    assert MOE_TINY == BUILDER_MOE_TINY
    for vocab in (TASK_VOCAB, 300):
        model = built(moe_tiny_config(vocab, 64, 1, 2, 0))
        shape = shape_from_size("moe-tiny", vocab)
        check_units(model, shape)
    shape = shape_from_size("moe-tiny", TASK_VOCAB)
    assert (total_params(shape), active_params(shape)) == (MOE_TINY_TOTAL, MOE_TINY_ACTIVE)
    # a token runs 2 of each MoE block's 8 experts (3 x 64 x 32 weights each): 3 blocks x 6 x 6,144 idle
    assert MOE_TINY_TOTAL - MOE_TINY_ACTIVE == 3 * 6 * 3 * 64 * 32
    assert shape.moe.layers == (1, 2, 3) and shape.mla.q_lora_rank == 32
    assert shape_from_config(tiny_config("model.size=moe-tiny")).source == "deepseek-v3-moe-tiny, task vocabulary"


@pytest.mark.parametrize("config", [DEEPSEEK, QWEN3_MOE, MIXTRAL], ids=lambda c: c.model_type)
def test_local_moe_directories_count_every_module_exactly(config, tmp_path):
    config.save_pretrained(tmp_path)  # config.json only, no weights
    shape = shape_from_model_dir(tmp_path)
    check_units(built(config), shape)


def test_active_parameters_by_hand():
    # DeepSeek-V3 (MLA without a query latent, biases, 2 shared experts): blocks 1-2 have 4 experts of
    # 3 x 64 x 16 weights, a token runs 2; the shared experts (2 x 16 wide) and the router run in full.
    shape = shape_from_hf_config(DEEPSEEK.to_dict())
    assert shape.moe.layers == (1, 2) and shape.moe.shared == 2 and shape.mla.q_lora_rank == 0
    assert total_params(shape) - active_params(shape) == 2 * 2 * 3 * 64 * 16
    # Qwen3-MoE: every 2nd block is sparse but block 3 (mlp_only_layers): block 1 alone, 8 experts of
    # 3 x 64 x 24, top-2
    shape = shape_from_hf_config(QWEN3_MOE.to_dict())
    assert shape.moe.layers == (1,)
    assert total_params(shape) - active_params(shape) == 6 * 3 * 64 * 24
    # Mixtral: every block sparse, experts `intermediate_size` wide, 4 experts, top-2
    shape = shape_from_hf_config(MIXTRAL.to_dict())
    assert shape.moe.layers == (0, 1)
    assert total_params(shape) - active_params(shape) == 2 * 2 * 3 * 64 * 48
    assert (total_params(shape), active_params(shape)) == (112_064, 75_200)


def test_mla_counts_latents_cache_and_attention_flops():
    shape = shape_from_size("moe-tiny", TASK_VOCAB)
    block = units(shape)[1]
    # q_a 64x32, q_b 32x(4 x 24), kv_a 64x(32 + 8), kv_b 32x(4 x (16 + 16)), o (4 x 16)x64, MLP 3 x 64x192,
    # norms 2 x 64 + 32 + 32
    assert block.params == 64 * 32 + 32 * 96 + 64 * 40 + 32 * 128 + 64 * 64 + 3 * 64 * 192 + 2 * 64 + 64
    assert kv_cache_bytes_per_token(shape, "bf16") == (32 + 8) * 2   # the two latents, not keys and values
    mm = MemoryModel(trainable=False, seq_len=100)
    # scores over 4 heads x 24, values over 4 heads x 16
    assert unit_flops(block, shape, mm) == 2 * block.matmul_params + 2 * 100 * (96 + 64)


def test_every_expert_takes_memory_and_the_active_ones_take_flops():
    shape = shape_from_size("moe-tiny", TASK_VOCAB)
    block = units(shape)[2]
    assert block.routed_params == 8 * 3 * 64 * 32 and block.router_params == 8 * 64
    train = MemoryModel(compute="bf16", tokens=256, seq_len=64)
    cost = unit_bytes(block, shape, train)
    assert (cost.weights, cost.grads, cost.optimizer) == (block.params * 4, block.params * 4, block.params * 8)
    assert cost.copies == block.matmul_params * 2
    # FP8: the linear layers' copies are 1 byte, experts and router stay bf16 (2 bytes)
    kept = block.routed_params + block.router_params
    assert unit_bytes(block, shape, MemoryModel(compute="fp8")).copies == (block.matmul_params - kept) + 2 * kept
    assert active_matmul_params(block, shape) == block.matmul_params - 6 * 3 * 64 * 32
    frozen = MemoryModel(trainable=False, seq_len=64)
    assert unit_flops(block, shape, frozen) == 2 * active_matmul_params(block, shape) + 2 * 64 * (96 + 64)
    # QLoRA quantizes linear layers only: experts, router and norms stay in the base dtype (bf16 here)
    qlora = MemoryModel(compute="bf16", lora_r=4, quantize="int8")
    linears = block_linears(shape, 2)
    assert [name.rsplit(".", 2)[-2] for name, _, _ in linears][-3:] == ["shared_experts"] * 3
    rest = block.params - sum(n_in * n_out for _, n_in, n_out in linears)
    assert rest == block.routed_params + block.router_params + 2 * 64 + 32 + 32
    assert frozen_weight_bytes(block, shape, qlora) == sum(int8_bytes(i, o) for _, i, o in linears) + rest * 2


def test_layer_split_weighs_moe_blocks_by_all_their_experts():
    # 2 dense blocks, then 6 MoE blocks of 64 experts: an MoE block is ~9x a dense one
    config = DeepseekV3Config(vocab_size=64, hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
                              num_hidden_layers=8, num_attention_heads=4, n_shared_experts=1, n_routed_experts=64,
                              num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=2,
                              q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16)
    shape = shape_from_hf_config(config.to_dict())
    blocks = [u for u in units(shape) if u.kind == BLOCK]
    assert blocks[2].params > 8 * blocks[0].params
    mm = MemoryModel(compute="bf16", tokens=16, seq_len=16)
    plan = plan_layers(shape, mm, [DeviceSpec(f"cuda:{i}", 10**9) for i in range(2)])
    layers = [[u.layer for u in d.units if u.kind == BLOCK] for d in plan.devices]
    assert layers == [[0, 1, 2, 3, 4], [5, 6, 7]]   # the dense blocks are light: by layers it would be 4 and 4
    assert plan.devices[0].bytes.weights == sum(u.params for u in plan.devices[0].units) * 4
    assert plan.load_ratio() < 1.2


def test_activation_estimates_against_saved_tensors():
    """Saved tensors of one forward per block, without the weight copies and the attention probabilities
    (which the CPU's math attention keeps for MLA and a GPU's fused kernel does not)."""
    from dswb.engine.model.build import moe_tiny_config

    batch, seq = 4, 80
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # these tiny matmuls are much slower on many threads
    try:
        check_activation_estimates([moe_tiny_config(300, 128, 1, 2, 0), QWEN3_MOE, MIXTRAL], batch, seq)
    finally:
        torch.set_num_threads(threads)


def check_activation_estimates(configs, batch: int, seq: int) -> None:
    for config in configs:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").train()
        shape = shape_from_hf_config({**config.to_dict(), "vocab_size": model.config.vocab_size})
        ids = torch.randint(0, model.config.vocab_size, (batch, seq))
        for compute in ("fp32", "bf16"):
            measured = saved_per_block(model, ids, compute == "bf16", seq)
            for layer in shape.moe.layers:
                estimate = block_activation_bytes_per_token(shape, compute, layer)
                assert estimate == pytest.approx(measured[layer] / ids.numel(), rel=0.05), (config.model_type,
                                                                                                 compute, layer)


def saved_per_block(model, ids, amp: bool, seq: int) -> dict[int, int]:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights = {s for p in model.parameters() if p.dim() >= 2 for s in (tuple(p.shape[-2:]), tuple(p.shape[-2:])[::-1])}
    current, seen, handles = [-1], {}, []
    for k, layer in enumerate(model.model.layers):
        handles.append(layer.register_forward_pre_hook(lambda m, a, k=k: current.__setitem__(0, k)))
        handles.append(layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, -1)))

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            probs = t.dim() == 4 and t.shape[-2:] == (seq, seq)
            copy = t.dim() == 2 and t.dtype == torch.bfloat16 and tuple(t.shape) in weights
            seen[ptr] = (current[0], 0 if probs or copy else t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    out: dict[int, int] = {}
    for block, nbytes in seen.values():
        out[block] = out.get(block, 0) + nbytes
    return out


def test_report_shows_total_and_active_and_the_experts_memory():
    shape = shape_from_size("moe-tiny", TASK_VOCAB)
    plan = plan_layers(shape, MemoryModel(tokens=64, seq_len=32), [DeviceSpec("cpu")])
    assert model_line(plan).startswith("model: deepseek-v3-moe-tiny: params 271 K total, 160 K active per token "
                                       "(top-2 of 8 routed experts + 1 shared); embedding 1.02 K, 1 dense block x "
                                       "52.9 K, 3 MoE blocks x 71.9 K, head 1.02 K")
    routed = 3 * 8 * 3 * 64 * 32
    assert moe_line(plan) == ("moe: 3 MoE blocks, each with 8 routed experts (a token runs 2) and 1 shared: the routed "
                              "experts hold 147 K of the 271 K parameters and 2.2 MiB of weights, grads and optimizer "
                              "state, since every expert trains; FLOPs count the 160 K parameters a token runs")
    assert moe_line(plan) in plan_text(plan)
    data = plan_dict(plan)
    assert data["model"]["params"] == MOE_TINY_TOTAL and data["model"]["active_params"] == MOE_TINY_ACTIVE
    assert data["moe"] == {"experts": 8, "top_k": 2, "shared": 1, "layers": [1, 2, 3], "routed_params": routed,
                           "active_params": MOE_TINY_ACTIVE, "expert_bytes": routed * 16}
    frozen = plan_layers(shape, MemoryModel(trainable=False, tokens=64, seq_len=32), [DeviceSpec("cpu")])
    assert "576.0 KiB of frozen weights;" in moe_line(frozen)
    lora = plan_layers(shape, MemoryModel(compute="bf16", lora_r=4, tokens=64, seq_len=32), [DeviceSpec("cpu")])
    assert "288.0 KiB of frozen bf16 weights (LoRA does not adapt 3-D experts)" in moe_line(lora)


def test_lora_targets_mirror_the_live_model():
    from dswb.engine.adapters.lora import resolve_targets
    from dswb.engine.model.build import moe_tiny_config

    model = AutoModelForCausalLM.from_config(moe_tiny_config(TASK_VOCAB, 64, 1, 2, 0))
    shape = shape_from_size("moe-tiny", TASK_VOCAB)
    assert lora_targets(shape, ["all-linear"]) == frozenset(resolve_targets(model, ["all-linear"], "lora"))
    assert lora_targets(shape, ["q_a_proj"]) == frozenset(resolve_targets(model, ["q_a_proj"], "lora"))
    # gate_proj: the dense layer's and the shared experts' linears (the routed experts are 3-D parameters)
    assert lora_targets(shape, ["gate_proj"]) == frozenset(resolve_targets(model, ["gate_proj"], "lora"))
    assert any("shared_experts.gate_proj" in n for n in lora_targets(shape, ["gate_proj"]))
    for pattern in ("experts", "*.experts"):
        with pytest.raises(UserError, match="reaches Mixture-of-Experts experts"):
            resolve_targets(model, [pattern], "lora")
        with pytest.raises(UserError, match="reaches Mixture-of-Experts experts"):
            lora_targets(shape, [pattern])


def test_layer_mapping_reads_a_live_moe_model_with_every_expert():
    from dswb.engine.model.build import moe_tiny_config
    from dswb.engine.placement.layer_map import map_layers, model_units, shape_of

    model = AutoModelForCausalLM.from_config(moe_tiny_config(TASK_VOCAB, 64, 1, 2, 0))
    shape = shape_of(model)
    assert shape.moe is not None and shape.mla is not None
    live = model_units(model, shape)
    assert live == units(shape)
    assert sum(u.params for u in live) == sum(p.numel() for p in model.parameters())
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        want = model(ids).logits
        plan = plan_layers(shape, MemoryModel(tokens=8, seq_len=8), [DeviceSpec("cpu"), DeviceSpec("cpu")],
                           model_units=live)
        map_layers(model, plan, [torch.device("cpu")] * 2)
        assert plan.split_points() and torch.equal(model(ids).logits, want)


@pytest.mark.parametrize("broken, message", [
    ({"n_routed_experts": None}, "'n_routed_experts' must be a positive integer"),
    ({"num_experts_per_tok": 9}, "num_experts_per_tok 9 is more than the 8 experts"),
    ({"kv_lora_rank": 0}, "'kv_lora_rank' must be a positive integer"),
    ({"v_head_dim": ...}, "missing 'v_head_dim' \\(needed to plan its latent attention"),
    ({"moe_intermediate_size": ...}, "missing 'moe_intermediate_size' \\(needed to plan its experts"),
])
def test_broken_moe_configs_are_user_errors(broken, message):
    cfg = {**MOE_TINY, "model_type": "deepseek_v3", "vocab_size": 16, **broken}
    cfg = {k: v for k, v in cfg.items() if v is not ...}
    with pytest.raises(UserError, match=message):
        shape_from_hf_config(cfg)


def test_dswb_plan_on_moe_tiny_and_a_mixtral_directory(tmp_path):
    result = CliRunner().invoke(app, ["plan", "--set", "model.size=moe-tiny", "--devices", "2", "--memory", "1GB",
                                      "--json", str(tmp_path / "plan.json")])
    assert result.exit_code == 0, result.output
    assert "params 271 K total, 160 K active per token (top-2 of 8 routed experts + 1 shared)" in result.output
    assert "moe: 3 MoE blocks, each with 8 routed experts" in result.output
    assert json.loads((tmp_path / "plan.json").read_text())["model"]["active_params"] == MOE_TINY_ACTIVE
    MIXTRAL.save_pretrained(tmp_path / "mixtral")
    result = CliRunner().invoke(app, ["plan", "--set", f"model.path={tmp_path / 'mixtral'}", "--devices", "1",
                                      "--memory", "1GB"])
    assert result.exit_code == 0, result.output
    assert "params 112 K total, 75.2 K active per token (top-2 of 4 routed experts)" in result.output
