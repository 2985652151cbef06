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

A model that trains LoRA adapters (`lora_r > 0`, `[lora]`) keeps its base frozen: no gradients and no
optimizer state for it. The stages load that base in the dtype the run computes in (the engine's
`base_dtype`): bf16 when `run.precision` is "bf16", or "auto" on a GPU (what a plan is for), else fp32;
`base_bytes` is 2 or 4 a parameter. For QLoRA the blocks' projections are quantized (bitsandbytes):
NF4 with double quantization, 4 bits a weight plus an 8-bit absmax per 64 weights and an fp32 absmax per
256 of those (4.127 bits), or int8, a byte a weight plus an fp32 scale per output row; the embedding,
norms and head stay in the base dtype. The adapters, r x (in + out) parameters for each targeted linear
layer of shape in x out, and the modules trained in full beside them (peft's `modules_to_save`: a trained
copy beside the frozen original) are upcast to fp32 and count as a trained model's parameters
(`weight_bytes`, grads, AdamW state), with the bf16 compute copies autocast caches for them. The base
computes in its own dtype, so no compute copies are made of it; a quantized projection is dequantized to
the base dtype (bitsandbytes' compute dtype) one at a time, in the forward and again in the backward:
that transient goes into the device's peak. Activations are counted as for full training, plus what
the adapters' dropout keeps (`lora_dropout > 0`: SFT, RM, DPO and continued pretraining; PPO and GRPO
switch every dropout off). Measured with saved-tensor hooks on small Llamas with adapters on every linear
layer (peft, bf16 autocast), a block saves the same with a bf16 base as with an fp32 one: 8-10% less than
that count without dropout. With dropout each adapted layer runs its own on its input (cast to the
adapters' fp32), and autograd keeps the dropout's mask: 4 bytes per element of the input on the CPU,
where it is measured (`DROPOUT_MASK_BYTES`), which is an upper bound on CUDA, whose fused dropout keeps a
1-byte mask (not measured on a GPU). Under bf16 autocast that is all: each adapter keeps its own bf16
cast of its input either way. So a block keeps `4 x (sum of its adapted layers' input widths)` bytes a
token more: 4 x (6h + i) for all-linear on Llama (q, k, v, gate and up read h, o the attention width,
h on Llama, down i), 155,648 bytes a token and block for Llama-3-8B, +64% of its 241,800. In fp32 (no
autocast) each adapter also keeps the dropout's output (4 bytes an element) instead of the input it
shares with its siblings, which then nothing keeps (the attention's output, o's input, the attention
keeps anyway): 4 x (10h + i) for all-linear. An adapted head pays its mask too (4h a token). With
activation checkpointing only the recomputed block pays it (`device_peak_bytes`). Training FLOPs are 2
forwards through a frozen matmul (no weight gradient) and 3 through attention and trained parameters.

FLOPs per token follow PaLM's count: a forward pass is 2 x matmul parameters, plus 4 x seq_len x
heads x head_dim for attention in each block (MLA: 2 x seq_len x heads x (qk + v head dims)); training is
3 forwards (4 with checkpointing).

Mixture-of-Experts: every expert trains, so weights, gradients, AdamW state and compute copies (bf16 under
FP8 too: experts and routers stay out of FP8) count every expert; FLOPs count top_k of the routed experts
(`shapes.active_matmul_params`); MoE and MLA blocks' activations are `placement.moe`'s estimates.
Not counted: the CUDA context, allocator fragmentation, and temporary buffers of fused kernels; leave
headroom (`parallel.max_memory` at ~90% of a card).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from dswb.config.adapters import stage_lora
from dswb.engine.placement.moe import moe_block_bytes_per_token
from dswb.engine.placement.shapes import (BLOCK, EMBED, HEAD, NORM, ModelShape, Unit, active_matmul_params,
                                          block_linears, lora_targets, unit_linears, units)

COMPUTE_DTYPES = ("fp32", "bf16", "fp8")
STATE_DTYPES = {"fp32": 4, "bf16": 2}
KINDS = ("weights", "grads", "optimizer", "copies", "activations")
NF4_BLOCK = 64                  # weights per 8-bit absmax (bitsandbytes' default block size)
NF4_BLOCK2 = 256                # absmaxes per fp32 absmax of the second level (double quantization)
NF4_TABLES = 4 * (16 + 256)     # per tensor: the 16 NF4 values and the 256 absmax codes, fp32
SCORE = ("score",)              # the scalar head of a reward or value model, trained in full beside adapters
DROPOUT_OFF_STAGES = ("ppo", "grpo")   # stages that switch every dropout off (the engine's `disable_dropout`)
DROPOUT_MASK_BYTES = 4          # per element of an adapted layer's input: the dropout's mask, fp32 (measured on
                                # the CPU; CUDA's fused dropout keeps a bool mask, so an upper bound there)
# The tensor each block projection reads, by leaf name: projections that read the same tensor share it
# (without dropout their adapters keep it once). The attention's output (o's input) the attention keeps anyway.
PROJECTION_INPUT = {"q_proj": "attention input", "k_proj": "attention input", "v_proj": "attention input",
                    "o_proj": "", "gate_proj": "mlp input", "up_proj": "mlp input", "down_proj": "mlp product",
                    "q_a_proj": "attention input", "kv_a_proj_with_mqa": "attention input",
                    "q_b_proj": "query latent", "kv_b_proj": "kv latent"}


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
    lora_r: int = 0                      # rank of LoRA adapters on a frozen base (0: every parameter trains)
    lora_targets: frozenset[str] = frozenset()   # module names with adapters (`shapes.lora_targets`)
    lora_dropout: float = 0.0            # dropout on the adapters' input (0: none, or switched off by the stage)
    full_modules: frozenset[str] = frozenset()   # unit names trained in full beside the adapters
    quantize: str = "none"               # the frozen base's block projections: none (`base_bytes`) | nf4 | int8

    def describe(self) -> str:
        if self.trainable and self.lora_r:
            return self._describe_adapters()
        if not self.trainable:
            kv = f", KV cache for {self.kv_cache_tokens:,} tokens" if self.kv_cache_tokens else ""
            weights = {4: "fp32", 2: "bf16", 1: "fp8"}.get(self.weight_bytes, f"{self.weight_bytes}-byte")
            return f"frozen: {weights} weights, {self.compute} compute, {self.tokens:,} tokens per forward{kv}"
        state = {4: "fp32", 2: "bf16"}.get(self.state_bytes, f"{self.state_bytes}-byte")
        ckpt = "on" if self.activation_checkpointing else "off"
        return (f"training: fp32 weights and grads, AdamW moments {state}, {self.compute} compute, "
                f"activations for {self.tokens:,} tokens per micro-batch (seq {self.seq_len:,}), "
                f"activation checkpointing {ckpt}")

    def _describe_adapters(self) -> str:
        state = {4: "fp32", 2: "bf16"}.get(self.state_bytes, f"{self.state_bytes}-byte")
        dtype = base_dtype(self)
        base = {"nf4": f"NF4 (4.127 bits a weight; embedding, norms and head {dtype})",
                "int8": f"int8 (a byte a weight and an fp32 scale a row; embedding, norms and head {dtype})"}
        ckpt = "on" if self.activation_checkpointing else "off"
        dropout = f", dropout {self.lora_dropout:g}" if self.lora_dropout > 0 else ""
        return (f"training: LoRA adapters r={self.lora_r}{dropout} (fp32 weights and grads, AdamW moments "
                f"{state}) on a frozen base in {base.get(self.quantize, dtype)}, no grads or optimizer state for it, "
                f"{self.compute} compute, activations for {self.tokens:,} tokens per micro-batch "
                f"(seq {self.seq_len:,}), activation checkpointing {ckpt}")


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


def block_activation_bytes_per_token(shape: ModelShape, compute: str, layer: int | None = None) -> int:
    """Saved-for-backward bytes per token of one decoder block (measured formula, module docstring); of
    block `layer` of an MoE or MLA model (None: the block that keeps the most), `placement.moe`'s estimate."""
    if shape.moe is not None or shape.mla is not None:
        return moe_block_bytes_per_token(shape, compute, layer)
    h, i, kv, a = shape.hidden, shape.intermediate, shape.kv_dim, shape.heads
    if compute == "fp32":
        return 4 * (8 * h + 4 * i + 2 * kv + a + 2)
    return 30 * h + 8 * i + 4 * kv + 4 * (a + 2)


def head_activation_bytes_per_token(shape: ModelShape, compute: str) -> int:
    """The head's saved input plus the logits, their fp32 copy, log-softmax and gradient."""
    return shape.hidden * activation_bytes(compute) + shape.outputs * (activation_bytes(compute) + 12)


def working_set_bytes_per_token(shape: ModelShape, compute: str) -> int:
    """Transient bytes per token while one block runs without autograd (a frozen model); an MoE block's
    MLP is as wide as the experts a token runs (top_k and the shared ones)."""
    moe = shape.moe
    width = max(shape.intermediate, (moe.top_k + moe.shared) * moe.intermediate) if moe else shape.intermediate
    return (2 * shape.hidden + 2 * width) * activation_bytes(compute)


def kv_cache_bytes_per_token(shape: ModelShape, compute: str) -> int:
    """Keys and values of one block for one token (MLA: its two latents)."""
    return shape.cache_dim * activation_bytes(compute)


def kind_copy_bytes(kind: str, compute: str) -> int:
    """Bytes of the compute copy of a matmul weight in a unit of `kind` (0: none is made)."""
    if compute == "fp32" or kind not in (BLOCK, HEAD):
        return 0
    return 1 if compute == "fp8" and kind == BLOCK else 2


def copy_bytes_per_param(unit: Unit, compute: str) -> int:
    return kind_copy_bytes(unit.kind, compute)


def nf4_bytes(n: int) -> int:
    """Bytes of `n` weights in NF4 with double quantization (bitsandbytes, QLoRA): half a byte a weight, a
    byte per 64 weights (8-bit absmax), 4 bytes per 256 of those, and the tensor's two code tables."""
    blocks = -(-n // NF4_BLOCK)
    return -(-n // 2) + blocks + 4 * -(-blocks // NF4_BLOCK2) + NF4_TABLES


def int8_bytes(n_in: int, n_out: int) -> int:
    """Bytes of an `n_in` x `n_out` linear layer in LLM.int8 (bitsandbytes): a byte a weight, an fp32 scale a row."""
    return n_in * n_out + 4 * n_out


def quantized_bytes(n_in: int, n_out: int, quantize: str) -> int:
    return nf4_bytes(n_in * n_out) if quantize == "nf4" else int8_bytes(n_in, n_out)


def base_dtype(mm: MemoryModel) -> str:
    """The dtype of the frozen base under adapters: bf16 when the run computes in bf16 (FP8 runs autocast
    in bf16 too), else fp32, as the engine's `dswb.engine.stages.adapters.base_dtype` loads it."""
    return "fp32" if mm.compute == "fp32" else "bf16"


def base_bytes(mm: MemoryModel) -> int:
    """Bytes of a frozen base's parameter under adapters (not quantized): 2 in bf16, 4 in fp32."""
    return 4 if base_dtype(mm) == "fp32" else 2


def adapter_params(unit: Unit, shape: ModelShape, targets: frozenset[str], r: int) -> int:
    """Parameters of the LoRA adapters in `unit`: r x (in + out) for each targeted module (A: r x in, B: out x r)."""
    return sum(r * (n_in + n_out) for name, n_in, n_out in unit_linears(unit, shape) if name in targets)


def frozen_weight_bytes(unit: Unit, shape: ModelShape, mm: MemoryModel) -> int:
    """The frozen base's bytes of `unit`: a block's linear layers quantized for QLoRA (norms, biases, experts
    and routers stay in the base dtype, as do the embedding and the head), else every parameter in `base_bytes`."""
    if mm.quantize == "none" or unit.kind != BLOCK:
        return unit.params * base_bytes(mm)
    linears = block_linears(shape, unit.layer)
    projections = sum(quantized_bytes(n_in, n_out, mm.quantize) for _, n_in, n_out in linears)
    return projections + (unit.params - sum(n_in * n_out for _, n_in, n_out in linears)) * base_bytes(mm)


def adapter_dropout_bytes_per_token(unit: Unit, shape: ModelShape, mm: MemoryModel) -> int:
    """What the adapters' dropout adds to what `unit` keeps for the backward, per token (module docstring):
    its mask, `DROPOUT_MASK_BYTES` per element of each adapted layer's input; in fp32 also the dropout's
    output, less the inputs the adapters no longer keep (each tensor adapted projections read, but the
    attention's output). 0 without adapters, without dropout, and for the embedding (peft's embedding
    adapter has no dropout)."""
    if not (mm.lora_r and mm.lora_dropout > 0) or unit.kind not in (BLOCK, HEAD):
        return 0
    adapted = [(name, n_in) for name, n_in, _ in unit_linears(unit, shape) if name in mm.lora_targets]
    extra = DROPOUT_MASK_BYTES * sum(n_in for _, n_in in adapted)
    if mm.compute == "fp32":
        read = {PROJECTION_INPUT.get(name.rsplit(".", 1)[-1], name) if unit.kind == BLOCK else name: n_in
                for name, n_in in adapted}
        extra += 4 * sum(n_in for _, n_in in adapted) - 4 * sum(n for tensor, n in read.items() if tensor)
    return extra


def trained_activation_bytes(unit: Unit, shape: ModelShape, mm: MemoryModel) -> int:
    """Bytes a trained model's unit keeps for the backward (module docstring); with checkpointing a block
    keeps its input alone (its dropout's share is paid in `device_peak_bytes`)."""
    if unit.kind == BLOCK:
        per_token = (4 * shape.hidden if mm.activation_checkpointing
                     else block_activation_bytes_per_token(shape, mm.compute, unit.layer)
                     + adapter_dropout_bytes_per_token(unit, shape, mm))
        return mm.tokens * per_token + mm.kv_cache_tokens * kv_cache_bytes_per_token(shape, mm.compute)
    if unit.kind == EMBED:
        return mm.tokens * 8
    if unit.kind == NORM:
        return mm.tokens * 8 * shape.hidden
    return mm.tokens * (head_activation_bytes_per_token(shape, mm.compute)
                        + adapter_dropout_bytes_per_token(unit, shape, mm))


def adapter_unit_bytes(unit: Unit, shape: ModelShape, mm: MemoryModel) -> Bytes:
    """Bytes of one unit of a model that trains adapters: the frozen base (in its dtype, no compute copies:
    it computes in that dtype), and the adapters and any module trained in full (an fp32 copy beside the
    frozen original) with gradients, AdamW state and the compute copies autocast makes of them."""
    adapters = adapter_params(unit, shape, mm.lora_targets, mm.lora_r)
    full = unit.name in mm.full_modules
    trained = adapters + (unit.params if full else 0)
    copied = adapters + (unit.matmul_params if full else 0)
    return Bytes(weights=frozen_weight_bytes(unit, shape, mm) + trained * mm.weight_bytes,
                 grads=trained * mm.grad_bytes, optimizer=trained * mm.optimizer_states * mm.state_bytes,
                 copies=copied * copy_bytes_per_param(unit, mm.compute),
                 activations=trained_activation_bytes(unit, shape, mm))


def unit_bytes(unit: Unit, shape: ModelShape, mm: MemoryModel) -> Bytes:
    """Bytes of one unit on its device (the recompute peak of checkpointing is per device: see below)."""
    kept = unit.routed_params + unit.router_params if mm.compute == "fp8" else 0   # experts, routers: no FP8
    copies = (unit.matmul_params - kept) * copy_bytes_per_param(unit, mm.compute) + 2 * kept
    weights = unit.params * mm.weight_bytes
    if not mm.trainable:
        act = 0
        if unit.kind == BLOCK:
            act = mm.kv_cache_tokens * kv_cache_bytes_per_token(shape, mm.compute)
        elif unit.kind == HEAD:
            act = mm.tokens * shape.outputs * activation_bytes(mm.compute)
        return Bytes(weights=weights, copies=0, activations=act)
    if mm.lora_r:
        return adapter_unit_bytes(unit, shape, mm)
    return Bytes(weights=weights, grads=unit.params * mm.grad_bytes,
                 optimizer=unit.params * mm.optimizer_states * mm.state_bytes, copies=copies,
                 activations=trained_activation_bytes(unit, shape, mm))


def frozen_base_peak_bytes(shape: ModelShape, mm: MemoryModel) -> int:
    """What a frozen base makes on the fly in a block: for QLoRA, its largest projection dequantized to the
    base dtype (bitsandbytes' compute dtype); nothing for a base in its own dtype (no compute copies)."""
    if mm.quantize == "none":
        return 0
    largest = max(n_in * n_out for k in range(shape.layers) for _, n_in, n_out in block_linears(shape, k))
    return largest * base_bytes(mm)


def device_peak_bytes(shape: ModelShape, mm: MemoryModel) -> int:
    """Extra bytes on a device holding at least one block: the transient peak of one block.

    Trained with checkpointing: one block's full activations while it is recomputed, with what its
    adapters' dropout keeps (the block whose adapters keep the most). Frozen: the working set of the
    block that runs. Trained without checkpointing: nothing extra (already counted). Training adapters
    adds what the frozen base makes on the fly (`frozen_base_peak_bytes`).
    """
    if not mm.trainable:
        return mm.tokens * working_set_bytes_per_token(shape, mm.compute)
    peak = frozen_base_peak_bytes(shape, mm) if mm.lora_r else 0
    if mm.activation_checkpointing:
        dropout = max((adapter_dropout_bytes_per_token(u, shape, mm) for u in units(shape) if u.kind == BLOCK),
                      default=0)
        return peak + mm.tokens * (block_activation_bytes_per_token(shape, mm.compute) + dropout)
    return peak


def unit_flops(unit: Unit, shape: ModelShape, mm: MemoryModel) -> float:
    """FLOPs per token of one unit (training: 3 forwards, 4 with checkpointing; frozen: 1; a frozen
    base under adapters: 2 forwards, 3 with checkpointing); an MoE block's routed experts count top_k."""
    forward = 2.0 * active_matmul_params(unit, shape)
    attention = 2.0 * mm.seq_len * (shape.score_dim + shape.value_dim) if unit.kind == BLOCK else 0.0
    if not mm.trainable:
        return forward + attention
    recompute = 1.0 if mm.activation_checkpointing and unit.kind == BLOCK else 0.0
    if not mm.lora_r:
        return (3.0 + recompute) * (forward + attention)
    adapters = 2.0 * adapter_params(unit, shape, mm.lora_targets, mm.lora_r)
    if unit.name in mm.full_modules:
        return (3.0 + recompute) * (forward + attention + adapters)
    return (2.0 + recompute) * forward + (3.0 + recompute) * (attention + adapters)


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


# -- a stage that trains adapters, and the other models it holds ------------------------------------

@dataclass(frozen=True)
class Role:
    """A model of the stage beside the trained one (`planner.plan_stage` places it first)."""

    name: str              # reference | value
    shape: ModelShape
    memory: MemoryModel
    label: str             # what the plan's modules column says


def trains_adapters(config: Any, stage: str) -> bool:
    """`[lora]` is on for `stage` and it starts from a trained model (pretraining does only from `model.path`)."""
    return stage_lora(config, stage).enabled and (stage != "pretrain" or bool(config.model.path))


def lora_memory_model(mm: MemoryModel, settings: Any, shape: ModelShape, full: tuple[str, ...] = (),
                      where: str = "lora", dropout: bool = True) -> MemoryModel:
    """`mm` training the adapters `settings` (a `LoraConfig`) describes on `shape`, with the units named in
    `full` and `settings.modules_to_save` (by name or dotted suffix) trained in full beside them; a
    `modules_to_save` entry inside a decoder block is not counted. `dropout=False`: the stage switches
    `settings.dropout` off (`DROPOUT_OFF_STAGES`)."""
    names = [*settings.modules_to_save, *full]
    saved = {u.name for u in units(shape) for n in names if u.name == n or u.name.endswith("." + n)}
    targets = lora_targets(shape, list(settings.target_modules), f"{where}.target_modules")
    return replace(mm, lora_r=settings.r, lora_targets=targets, full_modules=frozenset(saved),
                   quantize=settings.quantize, lora_dropout=settings.dropout if dropout else 0.0)


def full_memory_model(mm: MemoryModel) -> MemoryModel:
    """`mm` with every parameter trained (no adapters)."""
    return replace(mm, lora_r=0, lora_targets=frozenset(), full_modules=frozenset(), quantize="none",
                   lora_dropout=0.0)


def reference_memory_model(mm: MemoryModel) -> MemoryModel:
    """The reference of a LoRA stage: the policy's own weights with the adapter off (no bytes of its
    own), a frozen forward's working set and logits."""
    return replace(full_memory_model(mm), trainable=False, weight_bytes=0, activation_checkpointing=False)


def has_reference(config: Any, stage: str) -> bool:
    """A reference model is live while the stage trains: PPO; GRPO with beta > 0; DPO unless its
    log-probs are precomputed."""
    return (stage == "ppo" or (stage == "grpo" and config.grpo.beta > 0)
            or (stage == "dpo" and not config.dpo.precompute_ref))


def adapter_stage(config: Any, stage: str, shape: ModelShape,
                  mm: MemoryModel) -> tuple[ModelShape, MemoryModel, list[Role]]:
    """A stage that trains adapters (`trains_adapters`): the trained model's shape (a scalar head for the
    reward model) and memory model, and its other models: the reference (`reference_memory_model`) and
    PPO's value model, its own frozen backbone with an adapter (`lora.value = "adapter"`) or trained in full.
    PPO and GRPO train without dropout (`DROPOUT_OFF_STAGES`), the other stages with `lora.dropout`."""
    settings = stage_lora(config, stage)
    where = f"{'train' if stage == 'pretrain' else stage}.lora"
    dropout = stage not in DROPOUT_OFF_STAGES
    if stage == "rm":
        shape = shape.with_scalar_head()
    trained = lora_memory_model(mm, settings, shape, SCORE if stage == "rm" else (), where, dropout)
    roles = []
    if has_reference(config, stage):
        roles.append(Role("reference", shape, reference_memory_model(trained), "reference: the policy, adapter off"))
    if stage == "ppo":
        value_shape = shape.with_scalar_head()
        if settings.value == "adapter":
            value = Role("value", value_shape, lora_memory_model(mm, settings, value_shape, SCORE, where, dropout),
                         "value: own frozen backbone + adapter")
        else:
            value = Role("value", value_shape, full_memory_model(mm), "value: trained in full")
        roles.append(value)
    return shape, trained, roles
