"""What each module costs on its device: bytes by kind and FLOPs per token, as pure formulas.

Kinds of bytes (per unit, see `shapes.Unit`):
- weights: parameters x 4 (dswb keeps fp32 master weights; autocast computes in bf16);
- grads: parameters x 4, for a trained model only;
- optimizer: AdamW's two moments, parameters x 2 x 4 (fp32) or x 2 x 2 (bf16 moments);
- copies: low-precision copies of matmul weights that autocast (bf16: 2 bytes) or FP8 (1 byte for the
  decoder blocks' linears; the head stays bf16) keep for the forward and backward;
- activations: what the backward needs, for `tokens` tokens per micro-batch (below).

Activation bytes per token of one decoder block, measured with saved-tensor hooks on transformers'
Llama (sdpa attention), h = hidden, i = intermediate, kv = kv heads x head dim, a = heads:
- fp32:            4 x (8h + 4i + 2kv + a + 2)
- bf16 autocast:   30h + 8i + 4kv + 4(a + 2)     (norms and the residual stream stay fp32)
FP8 is counted as bf16 (conservative: FP8 linears may keep their inputs in 1 byte). The final norm keeps
8h bytes per token, the head its input (4h or 2h) and the logits: V x (logit bytes + 12) for the logits,
their fp32 copy, the saved log-softmax and the logits' gradient.
With activation checkpointing a block keeps only its input (4h bytes per token) and each device holding
blocks needs one block's full activations while it recomputes that block in the backward.
A frozen model (reference, reward) keeps no activations: one block's working set, `tokens x (2h + 2i) x`
activation bytes, is transient, plus a KV cache when it generates.

FLOPs per token follow PaLM's count: a forward pass is 2 x matmul parameters, plus 4 x seq_len x
heads x head_dim for attention in each block; training is 3 forwards (4 with checkpointing).
Not counted: the CUDA context, allocator fragmentation, and temporary buffers of fused kernels; leave
headroom (`parallel.max_memory` at ~90% of a card).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from dswb.engine.placement.shapes import BLOCK, EMBED, HEAD, NORM, ModelShape, Unit

COMPUTE_DTYPES = ("fp32", "bf16", "fp8")
STATE_DTYPES = {"fp32": 4, "bf16": 2}
KINDS = ("weights", "grads", "optimizer", "copies", "activations")


@dataclass(frozen=True)
class MemoryModel:
    """How a model is run: trained or frozen, in which precision, on how many tokens at once."""

    trainable: bool = True
    weight_bytes: int = 4
    grad_bytes: int = 4
    optimizer_states: int = 2            # AdamW: exp_avg and exp_avg_sq
    state_bytes: int = 4                 # 4: fp32 moments, 2: bf16 moments
    compute: str = "fp32"                # fp32 | bf16 | fp8
    tokens: int = 8192                   # tokens per micro-batch (padded: batch x longest)
    seq_len: int = 2048                  # attention context
    activation_checkpointing: bool = False
    kv_cache_tokens: int = 0             # tokens held in a KV cache while generating

    def describe(self) -> str:
        if not self.trainable:
            kv = f", KV cache for {self.kv_cache_tokens:,} tokens" if self.kv_cache_tokens else ""
            weights = {4: "fp32", 2: "bf16", 1: "fp8"}.get(self.weight_bytes, f"{self.weight_bytes}-byte")
            return f"frozen: {weights} weights, {self.compute} compute, {self.tokens:,} tokens per forward{kv}"
        state = {4: "fp32", 2: "bf16"}.get(self.state_bytes, f"{self.state_bytes}-byte")
        ckpt = "on" if self.activation_checkpointing else "off"
        return (f"training: fp32 weights and grads, AdamW moments {state}, {self.compute} compute, "
                f"activations for {self.tokens:,} tokens per micro-batch (seq {self.seq_len:,}), "
                f"activation checkpointing {ckpt}")


@dataclass
class Bytes:
    """Bytes by kind; adds up."""

    weights: int = 0
    grads: int = 0
    optimizer: int = 0
    copies: int = 0
    activations: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.copies + self.activations

    def __add__(self, other: Bytes) -> Bytes:
        return Bytes(*(getattr(self, k) + getattr(other, k) for k in KINDS))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def activation_bytes(compute: str) -> int:
    """Bytes of an activation element in matmul outputs."""
    return 4 if compute == "fp32" else 2


def block_activation_bytes_per_token(shape: ModelShape, compute: str) -> int:
    """Saved-for-backward bytes per token of one decoder block (measured formula, module docstring)."""
    h, i, kv, a = shape.hidden, shape.intermediate, shape.kv_dim, shape.heads
    if compute == "fp32":
        return 4 * (8 * h + 4 * i + 2 * kv + a + 2)
    return 30 * h + 8 * i + 4 * kv + 4 * (a + 2)


def head_activation_bytes_per_token(shape: ModelShape, compute: str) -> int:
    """The head's saved input plus the logits, their fp32 copy, log-softmax and gradient."""
    return shape.hidden * activation_bytes(compute) + shape.outputs * (activation_bytes(compute) + 12)


def working_set_bytes_per_token(shape: ModelShape, compute: str) -> int:
    """Transient bytes per token while one block runs without autograd (a frozen model)."""
    return (2 * shape.hidden + 2 * shape.intermediate) * activation_bytes(compute)


def kv_cache_bytes_per_token(shape: ModelShape, compute: str) -> int:
    """Keys and values of one block for one token."""
    return 2 * shape.kv_dim * activation_bytes(compute)


def copy_bytes_per_param(unit: Unit, compute: str) -> int:
    if compute == "fp32" or unit.kind not in (BLOCK, HEAD):
        return 0
    return 1 if compute == "fp8" and unit.kind == BLOCK else 2


def unit_bytes(unit: Unit, shape: ModelShape, mm: MemoryModel) -> Bytes:
    """Bytes of one unit on its device (the recompute peak of checkpointing is per device: see below)."""
    copies = unit.matmul_params * copy_bytes_per_param(unit, mm.compute)
    weights = unit.params * mm.weight_bytes
    if not mm.trainable:
        act = 0
        if unit.kind == BLOCK:
            act = mm.kv_cache_tokens * kv_cache_bytes_per_token(shape, mm.compute)
        elif unit.kind == HEAD:
            act = mm.tokens * shape.outputs * activation_bytes(mm.compute)
        return Bytes(weights=weights, copies=0, activations=act)
    if unit.kind == BLOCK:
        per_token = (4 * shape.hidden if mm.activation_checkpointing
                     else block_activation_bytes_per_token(shape, mm.compute))
        act = mm.tokens * per_token + mm.kv_cache_tokens * kv_cache_bytes_per_token(shape, mm.compute)
    elif unit.kind == EMBED:
        act = mm.tokens * 8
    elif unit.kind == NORM:
        act = mm.tokens * 8 * shape.hidden
    else:
        act = mm.tokens * head_activation_bytes_per_token(shape, mm.compute)
    return Bytes(weights=weights, grads=unit.params * mm.grad_bytes,
                 optimizer=unit.params * mm.optimizer_states * mm.state_bytes, copies=copies, activations=act)


def device_peak_bytes(shape: ModelShape, mm: MemoryModel) -> int:
    """Extra bytes on a device holding at least one block: the transient peak of one block.

    Trained with checkpointing: one block's full activations while it is recomputed. Frozen: the
    working set of the block that runs. Trained without checkpointing: nothing extra (already counted).
    """
    if not mm.trainable:
        return mm.tokens * working_set_bytes_per_token(shape, mm.compute)
    if mm.activation_checkpointing:
        return mm.tokens * block_activation_bytes_per_token(shape, mm.compute)
    return 0


def unit_flops(unit: Unit, shape: ModelShape, mm: MemoryModel) -> float:
    """FLOPs per token of one unit (training: 3 forwards, 4 with checkpointing; frozen: 1)."""
    forward = 2.0 * unit.matmul_params
    if unit.kind == BLOCK:
        forward += 4.0 * mm.seq_len * shape.attn_dim
    if not mm.trainable:
        return forward
    factor = 4.0 if mm.activation_checkpointing and unit.kind == BLOCK else 3.0
    return factor * forward


def tokens_per_micro_batch(config: Any) -> tuple[int, int]:
    """(tokens per micro-batch, longest sequence) from a run config's batching settings."""
    b, max_len = config.batching, config.model.max_seq_len
    if b.mode == "fixed":
        return b.batch_size * max_len, max_len
    return b.max_tokens, min(max_len, b.max_tokens)


def memory_model_from_config(config: Any, device_type: str, trainable: bool = True,
                             optimizer_state: str = "fp32") -> MemoryModel:
    """The memory model of a run: precision from `run.precision` (auto: bf16 on CUDA), FP8 when
    `[fp8] enabled`, the batch shape from `[batching]`, checkpointing from `[parallel]`."""
    precision = config.run.precision
    compute = precision if precision in ("fp32", "bf16") else ("bf16" if device_type == "cuda" else "fp32")
    if getattr(getattr(config, "fp8", None), "enabled", False):
        compute = "fp8"
    tokens, seq_len = tokens_per_micro_batch(config)
    return MemoryModel(trainable=trainable, state_bytes=STATE_DTYPES[optimizer_state], compute=compute,
                       tokens=tokens, seq_len=seq_len,
                       activation_checkpointing=trainable and config.parallel.activation_checkpointing)
