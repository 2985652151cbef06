"""Mixture-of-Experts and latent attention for the planner: their shapes from a config, and what their
blocks keep for the backward.

`Moe`: the routed experts of DeepSeek-V3, Qwen3-MoE and Mixtral (`moe_from_config`); `Mla`: DeepSeek-V3's
multi-head latent attention (`mla_from_config`). A key missing from a `config.json` takes transformers'
default, as `from_pretrained` would build the model; the sizes of the experts and of the latents must be
there.

Activation bytes per token, fitted to saved-tensor hooks on transformers 5.24's DeepSeek-V3, Qwen3-MoE
and Mixtral on the CPU (`tests/test_moe_plan.py` checks them within 5%): estimates, fitted on small
models, where the Llama block's formula in `memory` is measured term by term. h = hidden, E = routed
experts, k = top_k, I = an expert's intermediate size, S = shared experts, a = heads, q / kv = the
attention's query and key/value widths, r_q / r_kv = the latent ranks, n / r / v = the nope, rope and
value head dims:
- an MoE block's MLP: k x (8h + 16I) for the routed path (each token's copy of its input, the experts'
  outputs; fp32 even under bf16 autocast, as transformers' grouped experts run on the CPU: an upper
  bound where they run in bf16), S x I x 16 (fp32) or 8 (bf16) for the shared experts (a dense MLP's
  count), and 8E for the router's scores;
- MLA: fp32 4 x (h + 3 r_q + 3 r_kv + 2a(n + r) + r + 2av + 2); bf16 4h + 8 r_q + 8 r_kv + 8a(n + r)
  + 6av + 8. The attention probabilities are not counted: the CPU's math attention keeps them when the
  query and value head dims differ, a GPU's fused kernel does not; with MLA the norms and residual keep
  4 x (5h + 2) in both precisions (the norms run in fp32);
- q, k, v and o attention (Qwen3-MoE, Mixtral): the Llama formula's terms but its MLP's, with q apart
  from h: fp32 4 x (6h + 2q + 2kv + a + 2), bf16 26h + 4q + 4kv + 4(a + 2); Qwen3's q/k norms add
  8(q + kv) in fp32, 6(q + kv) in bf16.

Pure Python; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dswb.errors import UserError

if TYPE_CHECKING:
    from dswb.engine.placement.shapes import ModelShape

MOE_TYPES = ("deepseek_v3", "qwen3_moe", "mixtral")
EXPERT_COUNT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts")
MLA_REQUIRED = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


@dataclass(frozen=True)
class Moe:
    """The routed experts of a Mixture-of-Experts model."""

    experts: int                 # routed experts in each MoE block
    top_k: int                   # routed experts each token runs
    intermediate: int            # each expert's intermediate size
    layers: tuple[int, ...]      # the MoE blocks (the others have a dense MLP)
    shared: int = 0              # DeepSeek-V3's shared experts: one MLP of shared x intermediate for every token

    def describe(self) -> str:
        shared = f" + {self.shared} shared" if self.shared else ""
        return f"top-{self.top_k} of {self.experts} routed experts{shared}"


@dataclass(frozen=True)
class Mla:
    """DeepSeek-V3's multi-head latent attention."""

    q_lora_rank: int             # 0: queries projected directly (q_proj)
    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_dim + self.qk_rope_dim


def config_int(cfg: dict, key: str, where: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def _optional_int(cfg: dict, key: str, default: int | None, where: str) -> int:
    """`cfg[key]` (0 for null), or transformers' default when the key is missing."""
    value = cfg.get(key, default)
    if value is None or value == 0:
        return 0
    return config_int({key: value}, key, where)


def _require(cfg: dict, keys: tuple[str, ...], where: str, what: str) -> None:
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise UserError(f"{where}: missing '{missing[0]}' (needed to plan {what}: {', '.join(keys)})")


def moe_from_config(cfg: dict[str, Any], model_type: str, layers: int, where: str) -> Moe | None:
    """The routed experts of a DeepSeek-V3, Qwen3-MoE or Mixtral config (None: a Qwen3-MoE with 0 experts).

    MoE blocks: DeepSeek-V3's from `first_k_dense_replace` on; Qwen3-MoE's every `decoder_sparse_step`-th
    but `mlp_only_layers`; all of Mixtral's (whose experts are `intermediate_size` wide)."""
    key = next((k for k in EXPERT_COUNT_KEYS if k in cfg), EXPERT_COUNT_KEYS[0])
    _require(cfg, (key, "num_experts_per_tok") + (() if model_type == "mixtral" else ("moe_intermediate_size",)),
             where, "its experts")
    if model_type == "qwen3_moe" and cfg[key] == 0:
        return None
    experts, top_k = config_int(cfg, key, where), config_int(cfg, "num_experts_per_tok", where)
    if top_k > experts:
        raise UserError(f"{where}: num_experts_per_tok {top_k} is more than the {experts} experts")
    if model_type == "mixtral":
        return Moe(experts, top_k, config_int(cfg, "intermediate_size", where), tuple(range(layers)))
    intermediate = config_int(cfg, "moe_intermediate_size", where)
    if model_type == "deepseek_v3":
        first = _optional_int(cfg, "first_k_dense_replace", 3, where)
        return Moe(experts, top_k, intermediate, tuple(range(first, layers)),
                   shared=_optional_int(cfg, "n_shared_experts", 1, where))
    step = _optional_int(cfg, "decoder_sparse_step", 1, where) or 1
    dense = set(cfg.get("mlp_only_layers") or [])
    return Moe(experts, top_k, intermediate, tuple(k for k in range(layers) if k not in dense and (k + 1) % step == 0))


def mla_from_config(cfg: dict[str, Any], where: str) -> Mla:
    """DeepSeek-V3's latent attention (`q_lora_rank` null: no query latent)."""
    _require(cfg, MLA_REQUIRED, where, "its latent attention")
    return Mla(q_lora_rank=_optional_int(cfg, "q_lora_rank", 1536, where),
               kv_lora_rank=config_int(cfg, "kv_lora_rank", where),
               qk_nope_dim=config_int(cfg, "qk_nope_head_dim", where),
               qk_rope_dim=config_int(cfg, "qk_rope_head_dim", where), v_head_dim=config_int(cfg, "v_head_dim", where))


def moe_mlp_bytes_per_token(hidden: int, moe: Moe, compute: str) -> int:
    """Saved-for-backward bytes per token of an MoE block's MLP: routed path, shared experts, router."""
    shared = moe.shared * moe.intermediate * (16 if compute == "fp32" else 8)
    return moe.top_k * (8 * hidden + 16 * moe.intermediate) + shared + 8 * moe.experts


def mla_bytes_per_token(hidden: int, heads: int, mla: Mla, compute: str) -> int:
    """Saved-for-backward bytes per token of MLA (without the attention probabilities)."""
    qk, v = heads * mla.qk_head_dim, heads * mla.v_head_dim
    latents = mla.q_lora_rank + mla.kv_lora_rank
    if compute == "fp32":
        return 4 * (hidden + 3 * latents + 2 * qk + mla.qk_rope_dim + 2 * v + 2)
    return 4 * hidden + 8 * latents + 8 * qk + 6 * v + 8


def norm_bytes_per_token(hidden: int) -> int:
    """An MLA block's two RMSNorms and residual stream (fp32 in both precisions)."""
    return 4 * (5 * hidden + 2)


def attention_bytes_per_token(shape: ModelShape, compute: str) -> int:
    """Saved-for-backward bytes per token of a block with q, k, v and o projections but its MLP's: norms,
    residual and attention."""
    h, q, kv, a, norms = shape.hidden, shape.attn_dim, shape.kv_dim, shape.heads, shape.qk_norm
    if compute == "fp32":
        return 4 * (6 * h + 2 * q + 2 * kv + a + 2) + 8 * (q + kv) * norms
    return 26 * h + 4 * q + 4 * kv + 4 * (a + 2) + 6 * (q + kv) * norms


def moe_block_bytes_per_token(shape: ModelShape, compute: str, layer: int | None = None) -> int:
    """Saved-for-backward bytes per token of block `layer` of an MoE or MLA model (None: the block that keeps
    the most): norms and attention (MLA's, or q, k, v and o), and the MLP (an MoE block's, or a dense one's
    as in the Llama formula)."""
    if layer is None:
        return max(moe_block_bytes_per_token(shape, compute, k) for k in range(shape.layers))
    h, fp32 = shape.hidden, compute == "fp32"
    if shape.is_moe_layer(layer):
        mlp = moe_mlp_bytes_per_token(h, shape.moe, compute)
    else:
        mlp = (16 if fp32 else 8) * shape.intermediate
    if shape.mla is not None:
        return norm_bytes_per_token(h) + mla_bytes_per_token(h, shape.heads, shape.mla, compute) + mlp
    return attention_bytes_per_token(shape, compute) + mlp
