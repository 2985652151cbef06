"""MFU: the FLOPs-per-token formula (6N + 12 L d T), the GPU peak table, the override, and the
metrics the loop adds."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dswb.engine.telemetry.mfu import (Peak, decoder_flops_per_token, describe, device_peak, lookup_peak, mfu,
                                       model_flops_per_token, throughput_metrics)


def test_formula():
    assert decoder_flops_per_token(1_000_000, 4, 128, 64) == 6e6 + 12 * 4 * 128 * 64


def test_model_count_excludes_the_input_embedding_and_counts_a_tied_head_once():
    cfg = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2)
    untied = LlamaForCausalLM(LlamaConfig(**cfg, tie_word_embeddings=False))
    total = sum(p.numel() for p in untied.parameters())
    flops, text = model_flops_per_token(untied, 32)
    assert flops == 6 * (total - 100 * 64) + 12 * 2 * 64 * 32
    assert "6 x" in text and "12 x 2 layers x 64 attn width x 32 mean context" in text
    tied = LlamaForCausalLM(LlamaConfig(**cfg, tie_word_embeddings=True))
    tied_total = sum(p.numel() for p in tied.parameters())   # the shared matrix is counted once
    assert model_flops_per_token(tied, 32)[0] == 6 * tied_total + 12 * 2 * 64 * 32


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", ("H100 SXM", 989.0, 1979.0)),
    ("NVIDIA H100 PCIe", ("H100 PCIe", 756.0, 1513.0)),
    ("NVIDIA H100 NVL", ("H100 NVL", 835.0, 1671.0)),
    ("NVIDIA H200", ("H200 SXM", 989.0, 1979.0)),
    ("NVIDIA H20", ("H20", 148.0, 296.0)),
    ("NVIDIA A100-SXM4-80GB", ("A100", 312.0, None)),
    ("NVIDIA L40S", ("L40S", 362.0, 733.0)),
    ("NVIDIA L4", ("L4", 121.0, 242.0)),
    ("NVIDIA GeForce RTX 4090", ("RTX 4090", 165.0, 330.0)),
    ("NVIDIA A10G", None),
    ("Tesla T4", None),
])
def test_peak_table(name, expected):
    assert lookup_peak(name) == expected


def test_device_peak_on_cpu_needs_the_override():
    assert device_peak(torch.device("cpu")).tflops == 0
    assert "set monitor.peak_tflops" in device_peak(torch.device("cpu")).source
    assert device_peak(torch.device("cpu"), 2.5) == Peak(2.5, "monitor.peak_tflops")


def test_metrics_and_log_line():
    assert mfu(1e9, 1000.0, 2.0) == 0.5
    assert throughput_metrics(0.0, 1000.0, Peak(2.0, "x")) == {}
    assert throughput_metrics(1e9, 1000.0, Peak(0.0, "unknown")) == {"tflops": 1.0}
    assert throughput_metrics(1e9, 1000.0, Peak(2.0, "x")) == {"tflops": 1.0, "mfu": 0.5}
    assert describe(4.5e6, Peak(989.0, "H100 SXM dense BF16")) == \
        "MFU: 4.5 MFLOP/token, peak 989 TFLOP/s (H100 SXM dense BF16)"
    assert "tflops reported, no mfu" in describe(4.5e6, Peak(0.0, "unknown for cpu (set monitor.peak_tflops)"))


def test_moe_tiny_counts_its_active_parameters_and_mla_widths():
    from transformers import DeepseekV3ForCausalLM

    from dswb.engine.model.build import moe_tiny_config

    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(moe_tiny_config(16, 64, 1, 2, 0))
    assert sum(p.numel() for p in model.parameters()) == 270_656
    # matmul params: all but the 16 x 64 embedding; 3 MoE layers x 8 experts x 3 x 64 x 32 routed weights,
    # of which a token runs 2 experts: 147,456 - 36,864 idle
    matmul, routed, active_routed = 270_656 - 16 * 64, 3 * 8 * 3 * 64 * 32, 3 * 2 * 3 * 64 * 32
    active = matmul - routed + active_routed
    assert (matmul, active) == (269_632, 159_040)
    flops, text = model_flops_per_token(model, 11)
    assert flops == 6 * 159_040 + 12 * 4 * 80 * 11   # MLA: 4 heads x (24 qk + 16 v) / 2 = 80
    assert text == ("MFU: 0.9965 MFLOP/token from 0.159 M active of 0.27 M matmul parameters (MoE: top-2 of 8 routed "
                    "experts, 36,864 of their 147,456 parameters per token; everything else in full) = 6 x 159,040 "
                    "active matmul params + 12 x 4 layers x 80 attn width (MLA: 4 heads x (24 qk + 16 v) / 2) x 11 "
                    "mean context")


def test_mixtral_active_parameters():
    from transformers import MixtralConfig, MixtralForCausalLM

    model = MixtralForCausalLM(MixtralConfig(vocab_size=100, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                             num_experts_per_tok=2))
    matmul = sum(p.numel() for p in model.parameters()) - 100 * 64
    idle = 2 * 2 * 3 * 64 * 48   # 2 layers x 2 of 4 experts idle x (gate, up, down) 64 x 48
    flops, text = model_flops_per_token(model, 32)
    assert flops == 6 * (matmul - idle) + 12 * 2 * 64 * 32
    assert "(MoE: top-2 of 4 routed experts, 36,864 of their 73,728 parameters per token" in text
    assert text.endswith(f"= 6 x {matmul - idle:,} active matmul params + 12 x 2 layers x 64 attn width x 32 "
                         f"mean context")
