"""Model conversion: which linears become FP8 and why the rest stay high precision, layer groups,
`prepare_model` wiring (FP8 for trained models only, compile), and export to a plain HF model that
`AutoModelForCausalLM` loads without FP8 keys."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from dswb.config import load_config
from dswb.engine.fp8 import apply_fp8, export_model, fp8_disabled, fp8_info, fp8_layers
from dswb.engine.fp8.convert import layer_group
from dswb.engine.model.build import llama_config
from dswb.engine.train.prepare import COMPILED_ATTR, compile_model, prepare_model
from dswb.errors import UserError

CPU = torch.device("cpu")


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config("tiny", 64, 32, 1, 2, 0))


def fp8_cfg(*extra: str):
    return load_config(None, ["fp8.enabled=true", *extra])


def test_tiny_llama_converts_every_projection_and_keeps_head_embedding_and_norms():
    model = apply_fp8(tiny_llama(), fp8_cfg().fp8, CPU)
    info = fp8_info(model)
    assert len(info.converted) == 28 and info.kept == [("lm_head", "skip pattern 'lm_head'")]
    groups = {}
    for _, group in info.converted:
        groups[group] = groups.get(group, 0) + 1
    assert groups == {"attn.qkv": 12, "attn.out": 4, "mlp.up": 8, "mlp.down": 4}
    assert type(model.lm_head) is torch.nn.Linear
    assert type(model.model.embed_tokens) is torch.nn.Embedding
    assert len(fp8_layers(model)) == 28
    lines = info.log_lines()
    assert lines[0].startswith("FP8 on: activations tile, weights block, gradients tile (E4M3), current scaling")
    assert "kept in high precision: lm_head (skip pattern 'lm_head')" in lines[2]


def test_filter_reasons_min_dim_multiple_and_patterns():
    model = apply_fp8(tiny_llama(), fp8_cfg("fp8.min_dim=128", "fp8.multiple_of=64",
                                            "fp8.skip=['lm_head', '*.self_attn.o_proj']").fp8, CPU)
    kept = dict(fp8_info(model).kept)
    assert kept["model.layers.0.self_attn.k_proj"] == "dims 128x64 < min_dim 128"       # kv heads: 2 x 32
    assert kept["model.layers.0.mlp.down_proj"] == "dims 352x128 not multiples of 64"
    assert kept["model.layers.3.self_attn.o_proj"] == "skip pattern '*.self_attn.o_proj'"
    converted = {name for name, _ in fp8_info(model).converted}
    assert converted == {f"model.layers.{i}.self_attn.q_proj" for i in range(4)}


@pytest.mark.parametrize("name, group", [
    ("model.layers.3.self_attn.q_proj", "attn.qkv"), ("model.layers.0.self_attn.o_proj", "attn.out"),
    ("model.layers.1.mlp.gate_proj", "mlp.up"), ("model.layers.1.mlp.down_proj", "mlp.down"),
    ("transformer.h.2.attn.c_proj", "attn.out"), ("transformer.h.2.mlp.c_proj", "mlp.down"),
    ("model.layers.0.mlp.experts.7.w2", "mlp.down"), ("encoder.block.0.custom", "block.custom"),
])
def test_layer_groups(name, group):
    assert layer_group(name) == group


def test_prepare_model_converts_trained_models_only():
    cfg = fp8_cfg()
    trained = prepare_model(tiny_llama(), cfg, CPU)
    frozen = prepare_model(tiny_llama(), cfg, CPU, role="reference", trainable=False)
    assert len(fp8_layers(trained)) == 28 and not fp8_layers(frozen)
    assert not fp8_layers(prepare_model(tiny_llama(), load_config(None), CPU))


def test_prepare_model_compile_marks_decoder_layers_and_keeps_state_dict_names():
    model = tiny_llama()
    names = set(model.state_dict())
    compile_model(model)   # compiling happens lazily at the first forward; not run here (minutes on a CPU)
    assert getattr(model, COMPILED_ATTR) == "4 x LlamaDecoderLayer"
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    assert set(model.state_dict()) == names


def test_export_gives_a_plain_model_and_leaves_the_training_model_alone():
    model = apply_fp8(tiny_llama(), fp8_cfg().fp8, CPU)
    compile_model(model)
    plain = export_model(model)
    assert not fp8_layers(plain) and len(fp8_layers(model)) == 28
    assert plain.model.layers[0].mlp.up_proj.weight is model.model.layers[0].mlp.up_proj.weight
    assert all("fp8" not in key for key in plain.state_dict())
    assert all(layer._compiled_call_impl is None for layer in plain.model.layers)
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    untouched = tiny_llama()
    assert export_model(untouched) is untouched


def test_exported_model_loads_with_transformers_and_computes_the_high_precision_logits(tmp_path):
    model = apply_fp8(tiny_llama(), fp8_cfg().fp8, CPU)
    export_model(model).save_pretrained(tmp_path, safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert type(loaded) is LlamaForCausalLM
    assert set(loaded.state_dict()) == set(tiny_llama().state_dict())
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad(), fp8_disabled(model):
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_fp8_disabled_is_exactly_the_high_precision_model():
    base = tiny_llama()
    ids = torch.tensor([[1, 7, 3, 9, 2]])
    with torch.no_grad():
        want = base(ids).logits
        model = apply_fp8(base, fp8_cfg().fp8, CPU)
        with fp8_disabled(model):
            assert torch.equal(model(ids).logits, want)
        assert not torch.equal(model(ids).logits, want)
    assert all(layer.fp8_enabled for layer in fp8_layers(model))


def test_torchao_backend_without_torchao_is_one_clear_error():
    try:
        import torchao  # noqa: F401
        pytest.skip("torchao is installed here; tests/test_fp8_torchao.py covers the backend")
    except ImportError:
        pass
    with pytest.raises(UserError, match=r"fp8.backend = 'torchao' needs torchao: pip install 'dswb\[torchao\]'"):
        apply_fp8(tiny_llama(), fp8_cfg("fp8.backend=torchao", "fp8.activations=row", "fp8.weights=row",
                                        "fp8.gradients=row").fp8, CPU)


def test_a_backend_this_machine_cannot_run_fails_the_run_with_one_line(tmp_path):
    from dswb.rundir import read_status
    from tests.helpers import run_in_process, tiny_config

    code = run_in_process(tiny_config("fp8.enabled=true", "fp8.backend=scaled_mm"), tmp_path / "run")
    status = read_status(tmp_path / "run" / "status.json")
    assert code == 2 and status["state"] == "failed"
    assert status["error"].startswith("fp8.backend = 'scaled_mm': the forward GEMM (tile x block scaling) cannot run "
                                      "on cpu") and "\n" not in status["error"]


def tiny_moe(seed: int = 0):
    from transformers import DeepseekV3ForCausalLM

    from dswb.engine.model.build import moe_tiny_config

    torch.manual_seed(seed)
    return DeepseekV3ForCausalLM(moe_tiny_config(16, 32, 1, 2, 0))


def test_moe_tiny_says_what_is_fp8_and_what_stays_in_high_precision():
    model = apply_fp8(tiny_moe(), fp8_cfg().fp8, CPU)
    info = fp8_info(model)
    # hidden 64: only the 4 o_proj (64x64) and layer 0's dense MLP (64x192) reach min_dim 64
    assert sorted(info.converted) == sorted([(f"model.layers.{i}.self_attn.o_proj", "attn.out") for i in range(4)]
                                            + [("model.layers.0.mlp.gate_proj", "mlp.up"),
                                               ("model.layers.0.mlp.up_proj", "mlp.up"),
                                               ("model.layers.0.mlp.down_proj", "mlp.down")])
    assert type(model.model.layers[1].mlp.experts).__name__ == "DeepseekV3Experts"
    lines = info.log_lines()
    assert lines[2].startswith("FP8 converted 7 linear layers (attn.out 4, mlp.down 1, mlp.up 2); kept in high "
                               "precision: model.layers.0.self_attn.q_a_proj (dims 64x32 < min_dim 64)")
    assert lines[3:] == [
        "fp8: 25 linear layers are narrower than fp8.min_dim = 64 and stay in high precision (self_attn.q_a_proj, "
        "self_attn.q_b_proj, self_attn.kv_a_proj_with_mqa, self_attn.kv_b_proj, shared_experts.gate_proj, "
        "shared_experts.up_proj, shared_experts.down_proj)",
        "fp8: 24 routed experts (3 MoE layers x 8; 6 3-D tensors, 147,456 weights) stay in high precision: FP8 covers "
        "nn.Linear layers only (no grouped FP8 GEMM for experts)",
        "fp8: 3 MoE routers (DeepseekV3TopkRouter) stay in high precision: they are not nn.Linear layers, and fp8.skip "
        "('*.gate', '*router*') keeps routers that are",
        # 4 x 64 x 64 + 3 x 64 x 192 in FP8; all matmul weights: every parameter but the embedding and the norms
        "fp8: 53,248 of the model's 268,800 matmul weights (19.8%) compute in FP8, the rest in high precision",
    ]


def test_moe_tiny_with_a_lower_min_dim_and_a_dense_model_without_narrow_layers():
    info = fp8_info(apply_fp8(tiny_moe(), fp8_cfg("fp8.min_dim=16").fp8, CPU))
    lines = info.log_lines()
    assert not any("narrower than fp8.min_dim" in line for line in lines)
    assert ("fp8: 4 linear layers have a dimension not a multiple of fp8.multiple_of and stay in high precision "
            "(self_attn.kv_a_proj_with_mqa)") in lines        # 64 x (32 latent + 8 rope)
    assert len(info.converted) == 4 * 4 + 3 + 3 * 3   # 4 of 5 attention projections a layer, dense MLP, shared experts
    assert len(fp8_info(apply_fp8(tiny_llama(), fp8_cfg().fp8, CPU)).log_lines()) == 3   # dense: as before


def test_a_moe_tiny_fp8_run_logs_the_experts_and_active_mfu(tmp_path):
    from tests.helpers import run_in_process, tiny_config

    code = run_in_process(tiny_config("model.size=moe-tiny", "fp8.enabled=true", "train.steps=2",
                                      "checkpoint.every=0"), tmp_path / "run")
    log = (tmp_path / "run" / "train.log").read_text()
    assert code == 0
    assert "fp8: 24 routed experts (3 MoE layers x 8; 6 3-D tensors, 147,456 weights) stay in high precision" in log
    assert "fp8: 25 linear layers are narrower than fp8.min_dim = 64" in log
    assert "active of 0.27 M matmul parameters (MoE: top-2 of 8 routed experts" in log
