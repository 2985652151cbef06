"""Model shapes from a config alone: the modules a planner places and their exact parameter counts.

A `ModelShape` comes from a built-in size (`model.size`) or from a Hugging Face `config.json`
(Llama, Mistral, Qwen2 and Qwen3 families), so a 70B model can be planned on a laptop: nothing is
allocated, no weights are read. `units(shape)` lists the placeable modules in forward order —
embedding, each decoder block, final norm, head — each with the parameters it owns and those in
its matrix multiplications (for FLOPs and low-precision compute copies). The counts equal
`sum(p.numel())` of the transformers model built from the same config (tested). `unit_linears` names
each unit's linear layers (and the embedding) with their shapes, and `lora_targets` picks the ones LoRA
adapts, as `dswb.engine.adapters.lora.resolve_targets` does on a live model.

Pure Python (json only); importing this module imports no torch.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dswb.errors import UserError

# Mirror of `dswb.engine.model.build.SIZES` (which imports torch): hidden, intermediate, layers, heads,
# kv heads. A test keeps the two equal.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (128, 352, 4, 4, 2),
    "small": (256, 704, 10, 8, 4),
    "base": (768, 2048, 12, 12, 4),
}
TASK_VOCAB = 16  # the built-in task's character vocabulary (pad, bos, eos, unk + 12 characters)
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
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

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim

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


def block_params(shape: ModelShape) -> tuple[int, int]:
    """(all parameters, matmul parameters) of one decoder block."""
    h, i, q, kv = shape.hidden, shape.intermediate, shape.attn_dim, shape.kv_dim
    attn_mm = h * q + 2 * h * kv + q * h
    mlp_mm = 3 * h * i
    biases = (q + 2 * kv) * shape.qkv_bias + h * shape.o_bias + (2 * i + h) * shape.mlp_bias
    norms = 2 * h + 2 * shape.head_dim * shape.qk_norm
    return attn_mm + mlp_mm + biases + norms, attn_mm + mlp_mm


def units(shape: ModelShape) -> list[Unit]:
    """The placeable modules in forward order, with exact parameter counts."""
    h = shape.hidden
    block_total, block_mm = block_params(shape)
    out: list[Unit] = [Unit("model.embed_tokens", EMBED, shape.vocab * h, 0)]
    out += [Unit(f"model.layers.{k}", BLOCK, block_total, block_mm, layer=k) for k in range(shape.layers)]
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
    return sum(u.params for u in units(shape))


def block_linears(shape: ModelShape, layer: int) -> list[tuple[str, int, int]]:
    """(module name, in features, out features) of the seven projections of decoder block `layer`."""
    h, i, q, kv = shape.hidden, shape.intermediate, shape.attn_dim, shape.kv_dim
    attn, mlp = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
    return [(f"{attn}.q_proj", h, q), (f"{attn}.k_proj", h, kv), (f"{attn}.v_proj", h, kv), (f"{attn}.o_proj", q, h),
            (f"{mlp}.gate_proj", h, i), (f"{mlp}.up_proj", h, i), (f"{mlp}.down_proj", i, h)]


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
        if not hits:
            leaves = [n.rsplit(".", 1)[-1] for n, _, _ in block_linears(shape, 0)]
            raise UserError(f"{where}: {pattern!r} matches no linear layer of the model (e.g. {', '.join(leaves)})")
        chosen.update(hits)
    return frozenset(chosen)


def _int(cfg: dict, key: str, where: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def shape_from_hf_config(cfg: dict[str, Any], where: str = "config.json") -> ModelShape:
    """A shape from the fields of a Hugging Face `config.json` (Llama / Mistral / Qwen2 / Qwen3)."""
    model_type = cfg.get("model_type", "")
    if model_type not in MODEL_TYPES:
        raise UserError(f"{where}: model_type {model_type!r} is not one the planner knows "
                        f"(supported: {', '.join(MODEL_TYPES)})")
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise UserError(f"{where}: missing '{missing[0]}' (needed to plan: {', '.join(REQUIRED)})")
    hidden, heads = _int(cfg, "hidden_size", where), _int(cfg, "num_attention_heads", where)
    kv_heads = _int(cfg, "num_key_value_heads", where) if cfg.get("num_key_value_heads") is not None else heads
    head_dim = _int(cfg, "head_dim", where) if cfg.get("head_dim") is not None else hidden // heads
    attention_bias = bool(cfg.get("attention_bias", False))
    return ModelShape(
        model_type=model_type, hidden=hidden, intermediate=_int(cfg, "intermediate_size", where),
        layers=_int(cfg, "num_hidden_layers", where), heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        vocab=_int(cfg, "vocab_size", where), tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or (attention_bias and model_type in ("llama", "qwen3")),
        o_bias=attention_bias and model_type in ("llama", "qwen3"),
        mlp_bias=bool(cfg.get("mlp_bias", False)) and model_type == "llama",
        qk_norm=model_type == "qwen3", source=where,
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
    """A built-in Llama size (untied embeddings, no biases), as `dswb.engine.model.build` builds it."""
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
    if config.data.source == "task" and not model.tokenizer:
        return shape_from_size(model.size, TASK_VOCAB, f"llama-{model.size}, task vocabulary")
    return shape_from_size(model.size, model.vocab_size, f"llama-{model.size}, vocab <= model.vocab_size")
