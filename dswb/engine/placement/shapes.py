"""Model shapes from a config alone: the modules a planner places and their exact parameter counts.

A `ModelShape` comes from a built-in size (`model.size`) or from a Hugging Face `config.json`
(Llama, Mistral, Qwen2 and Qwen3 families, and the Mixture-of-Experts DeepSeek-V3, Qwen3-MoE and
Mixtral), so a 70B model can be planned on a laptop: nothing is allocated, no weights are read.
`units(shape)` lists the placeable modules in forward order — embedding, each decoder block, final
norm, head — each with the parameters it owns and those in its matrix multiplications (for FLOPs and
low-precision compute copies). The counts equal `sum(p.numel())` of the transformers model built from
the same config (tested). `unit_linears` names each unit's linear layers (and the embedding) with their
shapes, and `lora_targets` picks the ones LoRA adapts, as `dswb.engine.adapters.lora.resolve_targets`
does on a live model.

Mixture-of-Experts (`ModelShape.moe`): an MoE block holds every routed expert (3-D parameters, not
linear layers), a router (experts x hidden) and, for DeepSeek-V3, shared experts (one MLP every token
uses); its unit counts all of them (`total_params`: all experts, what memory holds and trains), and
its `routed_params` the routed experts, of which a token runs top_k (`active_params`,
`active_matmul_params`). DeepSeek-V3's attention is multi-head latent attention
(`ModelShape.mla`): queries and keys/values through low-rank latents, a KV cache of the latents.

Pure Python (json only); importing this module imports no torch.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dswb.engine.placement.moe import MOE_TYPES, Mla, Moe, config_int, mla_from_config, moe_from_config
from dswb.errors import UserError

# Mirror of `dswb.engine.model.build.SIZES` (which imports torch): hidden, intermediate, layers, heads,
# kv heads. A test keeps the two equal.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (128, 352, 4, 4, 2),
    "small": (256, 704, 10, 8, 4),
    "base": (768, 2048, 12, 12, 4),
}
# Mirror of `dswb.engine.model.build.MOE_TINY` (`model.size = "moe-tiny"`, a DeepSeek-V3); a test keeps the two
# equal.
MOE_TINY = dict(hidden_size=64, intermediate_size=192, moe_intermediate_size=32, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8,
                num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=1.0,
                norm_topk_prob=True, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                v_head_dim=16)
MOE_SIZES = {"moe-tiny": MOE_TINY}
TASK_VOCAB = 16  # the built-in task's character vocabulary (pad, bos, eos, unk + 12 characters)
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3") + MOE_TYPES
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")

# Kinds of unit, in forward order.
EMBED, BLOCK, NORM, HEAD = "embed", "block", "norm", "head"


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a decoder-only transformer."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False          # Qwen3: RMSNorm over head_dim on q and k
    head_out: int | None = None    # outputs of the head; None: the vocabulary (an LM head)
    source: str = ""               # where the shape came from, for reports
    moe: Moe | None = None         # routed experts; None: a dense model
    mla: Mla | None = None         # latent attention (DeepSeek-V3); None: q, k, v and o projections

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def score_dim(self) -> int:
        """Width of the queries and keys the attention scores take their dot products over (all heads)."""
        return self.heads * self.mla.qk_head_dim if self.mla else self.attn_dim

    @property
    def value_dim(self) -> int:
        """Width of the values the attention sums (all heads)."""
        return self.heads * self.mla.v_head_dim if self.mla else self.attn_dim

    @property
    def cache_dim(self) -> int:
        """Elements a block's KV cache keeps per token: keys and values, or MLA's two latents."""
        return self.mla.kv_lora_rank + self.mla.qk_rope_dim if self.mla else 2 * self.kv_dim

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer in self.moe.layers

    @property
    def outputs(self) -> int:
        return self.vocab if self.head_out is None else self.head_out

    def with_scalar_head(self) -> ModelShape:
        """The same backbone with a one-output head (a value or reward model), never tied."""
        return replace(self, head_out=1, tie_embeddings=False)


@dataclass(frozen=True)
class Unit:
    """One placeable module: never split across devices."""

    name: str            # module path inside a causal-LM: "model.embed_tokens", "model.layers.3", ...
    kind: str            # embed | block | norm | head
    params: int          # parameters owned (0 for a head tied to the embedding)
    matmul_params: int   # parameters used in matrix multiplications (FLOPs, compute copies)
    layer: int = -1      # block index, -1 for other units
    tied_to: str = ""    # a tied head names the embedding it shares its weight with
    routed_params: int = 0   # an MoE block's routed experts (in `params` and `matmul_params`): a token runs top_k
    router_params: int = 0   # an MoE block's router (in `params` and `matmul_params`; not a linear layer)


def moe_params(shape: ModelShape, layer: int) -> tuple[int, int]:
    """(routed experts, router) parameters of block `layer`: every expert's gate, up and down
    projections ([experts, 2 x intermediate, hidden] and [experts, hidden, intermediate]) and the
    router's weight [experts, hidden]; (0, 0) for a dense block."""
    if not shape.is_moe_layer(layer):
        return 0, 0
    moe = shape.moe
    return moe.experts * 3 * shape.hidden * moe.intermediate, moe.experts * shape.hidden


def attention_biases(shape: ModelShape) -> int:
    h = shape.hidden
    if shape.mla is None:
        return (shape.attn_dim + 2 * shape.kv_dim) * shape.qkv_bias + h * shape.o_bias
    mla = shape.mla
    return (mla.q_lora_rank + mla.kv_lora_rank + mla.qk_rope_dim) * shape.qkv_bias + h * shape.o_bias


def block_params(shape: ModelShape, layer: int = 0) -> tuple[int, int]:
    """(all parameters, matmul parameters) of decoder block `layer` (every expert of an MoE block)."""
    h = shape.hidden
    linear_mm = sum(n_in * n_out for _, n_in, n_out in block_linears(shape, layer))
    routed, router = moe_params(shape, layer)
    mlp_bias = 0 if shape.is_moe_layer(layer) else (2 * shape.intermediate + h) * shape.mlp_bias
    norms = 2 * h + 2 * shape.head_dim * shape.qk_norm
    if shape.mla is not None:
        norms += shape.mla.q_lora_rank + shape.mla.kv_lora_rank   # q_a_layernorm, kv_a_layernorm
    matmul = linear_mm + routed + router
    return matmul + attention_biases(shape) + mlp_bias + norms, matmul


def block_unit(shape: ModelShape, layer: int) -> Unit:
    total, matmul = block_params(shape, layer)
    routed, router = moe_params(shape, layer)
    return Unit(f"model.layers.{layer}", BLOCK, total, matmul, layer=layer, routed_params=routed,
                router_params=router)


def units(shape: ModelShape) -> list[Unit]:
    """The placeable modules in forward order, with exact parameter counts."""
    h = shape.hidden
    out: list[Unit] = [Unit("model.embed_tokens", EMBED, shape.vocab * h, 0)]
    out += [block_unit(shape, k) for k in range(shape.layers)]
    out.append(Unit("model.norm", NORM, h, 0))
    head_mm = shape.outputs * h
    if shape.head_out is not None:
        out.append(Unit("score", HEAD, head_mm, head_mm))
    elif shape.tie_embeddings:
        out.append(Unit("lm_head", HEAD, 0, head_mm, tied_to="model.embed_tokens"))
    else:
        out.append(Unit("lm_head", HEAD, head_mm, head_mm))
    return out


def total_params(shape: ModelShape) -> int:
    """Every parameter, every expert included."""
    return sum(u.params for u in units(shape))


def inactive_params(unit: Unit, shape: ModelShape) -> int:
    """Parameters of `unit` a token does not use: the routed experts it is not sent to."""
    if not unit.routed_params:
        return 0
    return unit.routed_params // shape.moe.experts * (shape.moe.experts - shape.moe.top_k)


def active_params(shape: ModelShape) -> int:
    """Parameters a token uses: all but the routed experts it is not sent to (top_k of them run; the
    router, shared experts, attention, dense blocks, embedding and head in full)."""
    return sum(u.params - inactive_params(u, shape) for u in units(shape))


def active_matmul_params(unit: Unit, shape: ModelShape) -> int:
    """Matmul parameters of `unit` a token goes through (its FLOPs)."""
    return unit.matmul_params - inactive_params(unit, shape)


def attention_linears(shape: ModelShape, layer: int) -> list[tuple[str, int, int]]:
    """(name, in, out) of the attention's projections: q, k, v, o; or MLA's q_a, q_b (or q), kv_a, kv_b, o."""
    h, attn = shape.hidden, f"model.layers.{layer}.self_attn"
    if shape.mla is None:
        q, kv = shape.attn_dim, shape.kv_dim
        return [(f"{attn}.q_proj", h, q), (f"{attn}.k_proj", h, kv), (f"{attn}.v_proj", h, kv),
                (f"{attn}.o_proj", q, h)]
    mla, heads = shape.mla, shape.heads
    query = ([(f"{attn}.q_a_proj", h, mla.q_lora_rank), (f"{attn}.q_b_proj", mla.q_lora_rank, heads * mla.qk_head_dim)]
             if mla.q_lora_rank else [(f"{attn}.q_proj", h, heads * mla.qk_head_dim)])
    return query + [(f"{attn}.kv_a_proj_with_mqa", h, mla.kv_lora_rank + mla.qk_rope_dim),
                    (f"{attn}.kv_b_proj", mla.kv_lora_rank, heads * (mla.qk_nope_dim + mla.v_head_dim)),
                    (f"{attn}.o_proj", shape.value_dim, h)]


def mlp_linears(shape: ModelShape, layer: int) -> list[tuple[str, int, int]]:
    """(name, in, out) of the gate, up and down projections: the dense MLP, or an MoE block's shared
    experts (its routed experts and router are no linear layers)."""
    h, mlp = shape.hidden, f"model.layers.{layer}.mlp"
    if shape.is_moe_layer(layer):
        if not shape.moe.shared:
            return []
        mlp, i = f"{mlp}.shared_experts", shape.moe.shared * shape.moe.intermediate
    else:
        i = shape.intermediate
    return [(f"{mlp}.gate_proj", h, i), (f"{mlp}.up_proj", h, i), (f"{mlp}.down_proj", i, h)]


def block_linears(shape: ModelShape, layer: int) -> list[tuple[str, int, int]]:
    """(module name, in features, out features) of the linear layers of decoder block `layer`."""
    return attention_linears(shape, layer) + mlp_linears(shape, layer)


def unit_linears(unit: Unit, shape: ModelShape) -> list[tuple[str, int, int]]:
    """The modules of `unit` LoRA can adapt, as (name, in, out): a block's projections, the head
    (hidden -> outputs) and the embedding (vocab -> hidden: peft's embedding adapter has the same size)."""
    if unit.kind == BLOCK:
        return block_linears(shape, unit.layer)
    if unit.kind == HEAD:
        return [(unit.name, shape.hidden, shape.outputs)]
    if unit.kind == EMBED:
        return [(unit.name, shape.vocab, shape.hidden)]
    return []


def lora_targets(shape: ModelShape, patterns: list[str], where: str = "lora.target_modules") -> frozenset[str]:
    """Module names `patterns` give adapters: 'all-linear' is every block projection (not the head, nor a
    score head); another entry is a module name, a dotted suffix of one or an fnmatch pattern. A pattern
    that matches nothing is a `UserError`, as it is when the stage loads the model."""
    every = [name for u in units(shape) for name, _, _ in unit_linears(u, shape)]
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern == "all-linear":
            hits = [name for k in range(shape.layers) for name, _, _ in block_linears(shape, k)]
        else:
            hits = [n for n in every if n == pattern or n.endswith("." + pattern) or fnmatch.fnmatchcase(n, pattern)]
        if shape.moe and not hits and "expert" in pattern and "shared" not in pattern:   # routed experts: no linears
            raise UserError(f"{where}: {pattern!r} reaches Mixture-of-Experts experts, whose weights are 3-D "
                            f"parameters LoRA cannot adapt here; target the attention and shared linears")
        if not hits:
            leaves = [n.rsplit(".", 1)[-1] for n, _, _ in block_linears(shape, 0)]
            raise UserError(f"{where}: {pattern!r} matches no linear layer of the model (e.g. {', '.join(leaves)})")
        chosen.update(hits)
    return frozenset(chosen)


def shape_from_hf_config(cfg: dict[str, Any], where: str = "config.json") -> ModelShape:
    """A shape from the fields of a Hugging Face `config.json` (Llama / Mistral / Qwen2 / Qwen3, and the
    MoE DeepSeek-V3 / Qwen3-MoE / Mixtral). Optional fields missing from the file take transformers'
    defaults, as the model `from_pretrained` builds would."""
    model_type = cfg.get("model_type", "")
    if model_type not in MODEL_TYPES:
        raise UserError(f"{where}: model_type {model_type!r} is not one the planner knows "
                        f"(supported: {', '.join(MODEL_TYPES)})")
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise UserError(f"{where}: missing '{missing[0]}' (needed to plan: {', '.join(REQUIRED)})")
    hidden, heads = config_int(cfg, "hidden_size", where), config_int(cfg, "num_attention_heads", where)
    layers = config_int(cfg, "num_hidden_layers", where)
    mla = mla_from_config(cfg, where) if model_type == "deepseek_v3" else None
    kv_heads = config_int(cfg, "num_key_value_heads", where) if cfg.get("num_key_value_heads") is not None else heads
    head_dim = config_int(cfg, "head_dim", where) if cfg.get("head_dim") is not None else hidden // heads
    if mla is not None:  # DeepSeek-V3's `head_dim` is the rotary part; MLA has no kv heads of its own
        kv_heads, head_dim = heads, mla.qk_head_dim
    attention_bias = bool(cfg.get("attention_bias", False))
    biased = model_type in ("llama", "qwen3", "qwen3_moe", "deepseek_v3")
    return ModelShape(
        model_type=model_type, hidden=hidden, intermediate=config_int(cfg, "intermediate_size", where),
        layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        vocab=config_int(cfg, "vocab_size", where), tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or (attention_bias and biased),
        o_bias=attention_bias and biased,
        mlp_bias=bool(cfg.get("mlp_bias", False)) and model_type == "llama",
        qk_norm=model_type in ("qwen3", "qwen3_moe"), source=where,
        moe=moe_from_config(cfg, model_type, layers, where) if model_type in MOE_TYPES else None, mla=mla,
    )


def shape_from_model_dir(path: str | Path) -> ModelShape:
    """The shape in `path/config.json` (weights are neither needed nor read)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise UserError(f"model.path: {path} has no config.json (a Hugging Face model directory is needed)")
    try:
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_file}: cannot read: {' '.join(str(exc).split())}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{config_file}: expected a JSON object")
    return shape_from_hf_config(cfg, str(config_file))


def shape_from_size(size: str, vocab: int, source: str = "") -> ModelShape:
    """A built-in size (untied embeddings, no biases), as `dswb.engine.model.build` builds it: a Llama,
    or for `moe-tiny` a DeepSeek-V3."""
    if size in MOE_SIZES:
        cfg = {**MOE_SIZES[size], "model_type": "deepseek_v3", "vocab_size": vocab, "tie_word_embeddings": False}
        return replace(shape_from_hf_config(cfg, f"model.size {size}"), source=source or f"deepseek-v3-{size}")
    hidden, inter, layers, heads, kv = SIZES[size]
    return ModelShape("llama", hidden, inter, layers, heads, kv, hidden // heads, vocab,
                      source=source or f"llama-{size}")


def shape_from_config(config: Any) -> ModelShape:
    """The shape a run's config describes: `model.path`'s config.json, else `model.size`.

    For a built-in size the vocabulary is the task's 16 characters when the built-in task trains
    its own tokenizer, else `model.vocab_size` (an upper bound: a trained BPE may end smaller).
    """
    model = config.model
    if model.path:
        return shape_from_model_dir(model.path)
    name = f"deepseek-v3-{model.size}" if model.size in MOE_SIZES else f"llama-{model.size}"
    if config.data.source == "task" and not model.tokenizer:
        return shape_from_size(model.size, TASK_VOCAB, f"{name}, task vocabulary")
    return shape_from_size(model.size, model.vocab_size, f"{name}, vocab <= model.vocab_size")
