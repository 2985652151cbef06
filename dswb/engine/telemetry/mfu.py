"""Model FLOPs utilization: the FLOPs a step needs, over what the device could do in that time.

Training FLOPs per token of a decoder-only transformer (PaLM, appendix B; nanoGPT's estimate):

    6 * N  +  12 * L * d_attn * T

N: parameters that take part in matrix multiplies (all of them except the input embedding, which
is a lookup; a tied output head is counted once, as the head). The 6 is 2 FLOPs per multiply-add
times 3 (forward, input gradient, weight gradient). The second term is the attention scores and
the weighted sum over T context tokens in L layers of attention width d_attn (heads x head dim),
forward and backward, without discounting the causal mask, as PaLM and torchtitan count it.
Only real tokens are counted: padding is work the device does but the model does not need, so it
lowers MFU, as it should.

Mixture-of-Experts (DeepSeek-V3, Qwen3-MoE, Mixtral: routed experts in 3-D parameters): N counts the
parameters a token runs, the active ones: top_k / experts of the routed experts' parameters, the router,
shared experts, attention and dense blocks in full. Counting every expert would credit the device with
work it never did. Multi-head latent attention (DeepSeek-V3) scores over the query/key head dim and
sums over the value head dim: d_attn = heads x (qk + v head dims) / 2.

MFU = FLOPs per token x tokens/s / peak FLOP/s. The peak is the device's dense BF16 tensor-core
peak from `PEAKS` (also for FP8 runs, so that MFU stays comparable across runs with FP8 on and off;
an FP8 run that is faster shows a higher MFU), or `monitor.peak_tflops` when set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# (pattern on torch.cuda.get_device_name(), name, dense BF16 TFLOP/s, dense FP8 TFLOP/s or None).
# Vendor datasheet figures without sparsity; the first match wins, so the more specific come first.
PEAKS: list[tuple[str, str, float, float | None]] = [
    (r"H100.*NVL", "H100 NVL", 835.0, 1671.0),
    (r"H100.*PCIe", "H100 PCIe", 756.0, 1513.0),
    (r"H100|GH200", "H100 SXM", 989.0, 1979.0),
    (r"H200.*NVL", "H200 NVL", 835.0, 1671.0),
    (r"H200", "H200 SXM", 989.0, 1979.0),
    (r"H800", "H800 SXM", 989.0, 1979.0),
    (r"\bH20\b", "H20", 148.0, 296.0),
    (r"B200", "B200", 2250.0, 4500.0),
    (r"A100", "A100", 312.0, None),
    (r"A800", "A800", 312.0, None),
    (r"L40S", "L40S", 362.0, 733.0),
    (r"L40\b", "L40", 181.0, 362.0),
    (r"\bL4\b", "L4", 121.0, 242.0),
    (r"\bA10\b", "A10", 125.0, None),
    (r"RTX 6000 Ada", "RTX 6000 Ada", 364.0, 728.0),
    (r"RTX 4090", "RTX 4090", 165.0, 330.0),
    (r"RTX 3090", "RTX 3090", 71.0, None),
    (r"MI300X", "MI300X", 1307.0, 2615.0),
]


@dataclass(frozen=True)
class Peak:
    tflops: float      # 0: unknown
    source: str        # where the number comes from, for the log line


def lookup_peak(device_name: str) -> tuple[str, float, float | None] | None:
    """(name, dense BF16 TFLOP/s, dense FP8 TFLOP/s) of a known GPU, or None."""
    for pattern, name, bf16, fp8 in PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return name, bf16, fp8
    return None


def device_peak(device: torch.device, override_tflops: float = 0.0) -> Peak:
    """The peak MFU is measured against: the override, else the table for a known GPU, else unknown."""
    if override_tflops > 0:
        return Peak(override_tflops, "monitor.peak_tflops")
    if device.type != "cuda":
        return Peak(0.0, f"unknown for {device.type} (set monitor.peak_tflops)")
    name = torch.cuda.get_device_name(device)
    known = lookup_peak(name)
    if known is None:
        return Peak(0.0, f"unknown for {name} (set monitor.peak_tflops)")
    return Peak(known[1], f"{known[0]} dense BF16")


def decoder_flops_per_token(matmul_params: int, layers: int, attn_width: int, context: float) -> float:
    """Training FLOPs per token: 6 N + 12 L d_attn T (see the module docstring)."""
    return 6.0 * matmul_params + 12.0 * layers * attn_width * context


@dataclass(frozen=True)
class RoutedExperts:
    """The routed experts of a Mixture-of-Experts model: what a token runs of them."""

    params: int        # every routed expert's parameters (the 3-D expert weights)
    active: int        # what one token runs: top_k experts' share of each expert tensor
    top_k: int
    experts: int       # routed experts per MoE layer


def routed_experts(model: torch.nn.Module) -> RoutedExperts | None:
    """The routed experts of `model` (3-D `[experts, out, in]` parameters of its `experts` modules, top_k
    from its config's `num_experts_per_tok`); None for a dense model."""
    tensors = [p for name, p in model.named_parameters() if p.dim() == 3 and "expert" in name]
    top_k = getattr(getattr(model, "config", None), "num_experts_per_tok", None)
    if not tensors or not top_k:
        return None
    active = sum(p.numel() // p.shape[0] * min(top_k, p.shape[0]) for p in tensors)
    return RoutedExperts(sum(p.numel() for p in tensors), active, top_k, max(p.shape[0] for p in tensors))


def attention_width(cfg) -> tuple[float, str]:
    """d_attn of the 12 L d_attn T term, and how it was taken: heads x head dim, or for multi-head latent
    attention the mean of the query/key and value widths."""
    heads = getattr(cfg, "num_attention_heads", 0)
    qk, v = getattr(cfg, "qk_head_dim", None), getattr(cfg, "v_head_dim", None)
    if qk and v and getattr(cfg, "kv_lora_rank", None):
        width = heads * (qk + v) / 2
        return width, f"{width:g} attn width (MLA: {heads} heads x ({qk} qk + {v} v) / 2)"
    head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // max(1, heads))
    return heads * head_dim, f"{heads * head_dim} attn width"


def model_flops_per_token(model: torch.nn.Module, context: float) -> tuple[float, str]:
    """FLOPs per token of a transformers decoder at mean context `context`, and how it was counted
    (a Mixture-of-Experts model: its active parameters, module docstring)."""
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = output is not None and output.weight is embedding.weight
    matmul_params = params - (0 if tied else embedding.weight.numel())
    layers = getattr(cfg, "num_hidden_layers", 0)
    attn_width, width_text = attention_width(cfg)
    routed = routed_experts(model)
    active = matmul_params - (routed.params - routed.active if routed else 0)
    flops = decoder_flops_per_token(active, layers, attn_width, context)
    attention = f"12 x {layers} layers x {width_text} x {context:.0f} mean context"
    if routed is None:
        return flops, f"{flops / 1e6:.4g} MFLOP/token = 6 x {matmul_params:,} matmul params + {attention}"
    text = (f"MFU: {flops / 1e6:.4g} MFLOP/token from {active / 1e6:.3g} M active of {matmul_params / 1e6:.3g} M "
            f"matmul parameters (MoE: top-{routed.top_k} of {routed.experts} routed experts, {routed.active:,} of "
            f"their {routed.params:,} parameters per token; everything else in full) = 6 x {active:,} "
            f"active matmul params + {attention}")
    return flops, text


def achieved_tflops(flops_per_token: float, tokens_per_s: float) -> float:
    return flops_per_token * tokens_per_s / 1e12


def mfu(flops_per_token: float, tokens_per_s: float, peak_tflops: float) -> float:
    """Model FLOPs utilization in [0, 1] (0 when the peak is unknown)."""
    return achieved_tflops(flops_per_token, tokens_per_s) / peak_tflops if peak_tflops > 0 else 0.0


def throughput_metrics(flops_per_token: float, tokens_per_s: float, peak: Peak) -> dict[str, float]:
    """`tflops` (achieved model TFLOP/s) and, with a known peak, `mfu`; nothing without a FLOP count."""
    if flops_per_token <= 0:
        return {}
    out = {"tflops": achieved_tflops(flops_per_token, tokens_per_s)}
    if peak.tflops > 0:
        out["mfu"] = mfu(flops_per_token, tokens_per_s, peak.tflops)
    return out


def describe(flops_per_token: float, peak: Peak) -> str:
    """The run-log line that says what `tflops` and `mfu` are measured with."""
    head = f"MFU: {flops_per_token / 1e6:.4g} MFLOP/token"
    if peak.tflops > 0:
        return f"{head}, peak {peak.tflops:g} TFLOP/s ({peak.source})"
    return f"{head}; peak {peak.source}: tflops reported, no mfu"
