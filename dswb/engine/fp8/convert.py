"""Turn a model's linear layers into FP8 layers, and back into a plain model for export.

Only `nn.Linear` layers are candidates (embeddings and norms are other modules and always stay
high precision). A linear stays high precision when its name matches a skip pattern (`fp8.skip`,
fnmatch globs on the dotted name: the output head, MoE routers, reward and value heads by
default), when a dimension is under `fp8.min_dim`, or when a dimension is not a multiple of
`fp8.multiple_of` (FP8 GEMMs need multiples of 16). The conversion is recorded on the model
(`fp8_info`) so the stage can log what was converted and why the rest was not.

Mixture-of-Experts models keep their routed experts in 3-D parameters (`experts.gate_up_proj`,
`experts.down_proj`), not `nn.Linear`s, and their routers are modules of their own: both stay in high
precision, by design (an FP8 expert GEMM would be a grouped one; docs/fp8.md). `moe_kept` counts them
and the log says so, with the share of the matmul weights FP8 does cover.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from dswb.engine.fp8.linear import Fp8Linear
from dswb.engine.fp8.recipe import Fp8Recipe

INFO_ATTR = "_dswb_fp8"
# Common projection names -> the layer groups the dashboard shows.
GROUPS = {
    "attn.qkv": ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "query", "key", "value",
                 "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "wq", "wk", "wv"),
    "attn.out": ("o_proj", "out_proj", "c_proj_attn", "wo", "dense"),
    "mlp.up": ("gate_proj", "up_proj", "fc1", "c_fc", "w1", "w3", "gate_up_proj", "dense_h_to_4h"),
    "mlp.down": ("down_proj", "fc2", "w2", "dense_4h_to_h"),
}
_LEAF_GROUP = {leaf: group for group, leaves in GROUPS.items() for leaf in leaves}
_MIN_DIM = re.compile(r"< min_dim (\d+)$")


@dataclass(frozen=True)
class MoeKept:
    """What of a Mixture-of-Experts model stays in high precision by design, and what FP8 covers."""

    layers: int             # modules holding routed experts (one per MoE layer)
    experts: int            # routed experts per layer
    tensors: int            # their 3-D weights
    expert_weights: int
    routers: int
    router_types: tuple[str, ...]
    fp8_weights: int        # weights of the FP8 linear layers
    matmul_weights: int     # every linear layer's, expert's and router's weights

    def log_lines(self) -> list[str]:
        lines = [f"fp8: {self.layers * self.experts} routed experts ({self.layers} MoE layers x {self.experts}; "
                 f"{self.tensors} 3-D tensors, {self.expert_weights:,} weights) stay in high precision: FP8 covers "
                 f"nn.Linear layers only (no grouped FP8 GEMM for experts)"]
        if self.routers:
            lines.append(f"fp8: {self.routers} MoE routers ({', '.join(self.router_types)}) stay in high precision: "
                         f"they are not nn.Linear layers, and fp8.skip ('*.gate', '*router*') keeps routers that are")
        share = self.fp8_weights / max(1, self.matmul_weights)
        lines.append(f"fp8: {self.fp8_weights:,} of the model's {self.matmul_weights:,} matmul weights ({share:.1%}) "
                     f"compute in FP8, the rest in high precision")
        return lines


def moe_kept(model: torch.nn.Module, converted: list[str]) -> MoeKept | None:
    """The routed experts (`experts` modules with 3-D parameters) and routers (`...TopkRouter` / `...TopKRouter`
    modules) of `model`, beside the weights of its `converted` linear layers; None for a dense model."""
    experts = [[p for p in m.parameters(recurse=False) if p.dim() == 3]
               for name, m in model.named_modules() if "expert" in name]
    experts = [tensors for tensors in experts if tensors]
    if not experts:
        return None
    routers = [m for m in model.modules() if type(m).__name__.lower().endswith("router")]
    router_weights = sum(p.numel() for m in routers for p in m.parameters() if p.dim() == 2)
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    expert_weights = sum(p.numel() for tensors in experts for p in tensors)
    return MoeKept(layers=len(experts), experts=max(p.shape[0] for tensors in experts for p in tensors),
                   tensors=sum(len(tensors) for tensors in experts), expert_weights=expert_weights,
                   routers=len(routers), router_types=tuple(sorted({type(m).__name__ for m in routers})),
                   fp8_weights=sum(model.get_submodule(name).weight.numel() for name in converted),
                   matmul_weights=linear_weights + expert_weights + router_weights)


def _short(name: str) -> str:
    """`model.layers.1.mlp.shared_experts.gate_proj` -> `shared_experts.gate_proj`."""
    return ".".join([p for p in name.split(".") if not p.isdigit()][-2:])


@dataclass
class Fp8Info:
    """What the conversion did, for the run log and the statistics."""

    backend: str
    recipe: Fp8Recipe
    gemm_line: str
    converted: list[tuple[str, str]] = field(default_factory=list)   # (name, group)
    kept: list[tuple[str, str]] = field(default_factory=list)        # (name, reason)
    stats_supported: bool = True
    moe: MoeKept | None = None                                        # set by `fp8_info` for an MoE model

    def log_lines(self) -> list[str]:
        counts: dict[str, int] = {}
        for _, group in self.converted:
            counts[group] = counts.get(group, 0) + 1
        groups = ", ".join(f"{g} {n}" for g, n in sorted(counts.items()))
        kept = "; ".join(f"{name} ({why})" for name, why in self.kept[:8])
        more = f" and {len(self.kept) - 8} more" if len(self.kept) > 8 else ""
        return [f"FP8 on: {self.recipe.describe()}",
                self.gemm_line,
                f"FP8 converted {len(self.converted)} linear layers ({groups or 'none'}); "
                f"kept in high precision: {kept or 'none'}{more}"] + self.narrow_lines() + (
                    self.moe.log_lines() if self.moe else [])

    def narrow_lines(self) -> list[str]:
        """How many linear layers stayed in high precision for their dimensions (`fp8.min_dim`, `multiple_of`)."""
        narrow = [(name, m.group(1)) for name, why in self.kept if (m := _MIN_DIM.search(why))]
        odd = [name for name, why in self.kept if "not multiples of" in why]
        lines = []
        if narrow:
            kinds = ", ".join(dict.fromkeys(_short(name) for name, _ in narrow))
            lines.append(f"fp8: {len(narrow)} linear layers are narrower than fp8.min_dim = {narrow[0][1]} and stay in "
                         f"high precision ({kinds})")
        if odd:
            lines.append(f"fp8: {len(odd)} linear layers have a dimension not a multiple of fp8.multiple_of and stay "
                         f"in high precision ({', '.join(dict.fromkeys(_short(name) for name in odd))})")
        return lines


def layer_group(name: str) -> str:
    """The dashboard group of a layer from its dotted name: `model.layers.3.self_attn.q_proj` -> `attn.qkv`."""
    parts = [p for p in name.split(".") if not p.isdigit()]
    leaf = parts[-1] if parts else name
    if leaf == "c_proj" and len(parts) > 1:   # GPT-2 names both projections c_proj
        return "attn.out" if "attn" in parts[-2] else "mlp.down"
    if leaf in _LEAF_GROUP:
        return _LEAF_GROUP[leaf]
    return ".".join(parts[-2:]) if len(parts) > 1 else leaf


def keep_reason(name: str, layer: torch.nn.Linear, cfg: Any) -> str:
    """Why `layer` stays high precision ('' when it is converted)."""
    for pattern in cfg.skip:
        if fnmatch.fnmatchcase(name, pattern):
            return f"skip pattern '{pattern}'"
    dims = (layer.in_features, layer.out_features)
    if min(dims) < cfg.min_dim:
        return f"dims {dims[0]}x{dims[1]} < min_dim {cfg.min_dim}"
    if any(d % cfg.multiple_of for d in dims):
        return f"dims {dims[0]}x{dims[1]} not multiples of {cfg.multiple_of}"
    return ""


def linear_candidates(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Linear]]:
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear:
            yield name, module


def _set_child(model: torch.nn.Module, name: str, child: torch.nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, child)


def convert_model(model: torch.nn.Module, cfg: Any, gemms: Any, gemm_line: str) -> torch.nn.Module:
    """Replace the suitable `nn.Linear` layers of `model` (in place) by `Fp8Linear`s."""
    recipe = Fp8Recipe.from_config(cfg)
    info = Fp8Info(backend=cfg.backend, recipe=recipe, gemm_line=gemm_line)
    for name, layer in list(linear_candidates(model)):
        reason = keep_reason(name, layer, cfg)
        if reason:
            info.kept.append((name, reason))
            continue
        group = layer_group(name)
        _set_child(model, name, Fp8Linear.from_linear(layer, recipe, gemms, name, group))
        info.converted.append((name, group))
    setattr(model, INFO_ATTR, info)
    return model


def fp8_info(model: torch.nn.Module) -> Fp8Info | None:
    """What the conversion of `model` did; for an MoE model with what stays in high precision by design
    (counted here, so that every backend's conversion gets it)."""
    info = getattr(model, INFO_ATTR, None)
    if info is not None and info.moe is None:
        info.moe = moe_kept(model, [name for name, _ in info.converted])
    return info


def fp8_layers(model: torch.nn.Module) -> list[Fp8Linear]:
    return [m for m in model.modules() if isinstance(m, Fp8Linear)]


@contextmanager
def fp8_disabled(model: torch.nn.Module):
    """Run the FP8 layers as plain high-precision linears inside the block (the shadow check)."""
    layers = fp8_layers(model)
    before = [layer.fp8_enabled for layer in layers]
    for layer in layers:
        layer.fp8_enabled = False
    try:
        yield model
    finally:
        for layer, was in zip(layers, before):
            layer.fp8_enabled = was


def _plain(module: torch.nn.Module) -> torch.nn.Module | None:
    """A plain `nn.Linear` for an FP8 layer (dswb's or torchao's), else None."""
    if isinstance(module, Fp8Linear):
        return module.to_linear()
    if isinstance(module, torch.nn.Linear) and type(module).__module__.startswith("torchao."):
        plain = torch.nn.Linear.__new__(torch.nn.Linear)
        torch.nn.Module.__init__(plain)
        plain.in_features, plain.out_features = module.in_features, module.out_features
        plain.weight, plain.bias = module.weight, module.bias
        return plain
    return None


def _has_fp8(module: torch.nn.Module) -> bool:
    return any(_plain(m) is not None for m in module.modules())


def export_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model without FP8 layers, for `save_pretrained`: a structural copy of the modules on the
    way to each FP8 layer, which becomes a plain `nn.Linear` sharing its parameters. The training
    model is left as it is; nothing is copied when there is nothing to replace."""
    if not _has_fp8(model):
        return model

    def rebuild(module: torch.nn.Module) -> torch.nn.Module:
        plain = _plain(module)
        if plain is not None:
            return plain
        clone = copy.copy(module)
        clone._modules = dict(module._modules)
        clone.__dict__.pop("_compiled_call_impl", None)   # torch.compile'd forward of the original
        for name, child in module._modules.items():
            if child is not None and _has_fp8(child):
                clone._modules[name] = rebuild(child)
        return clone

    exported = rebuild(model)
    exported.__dict__.pop(INFO_ATTR, None)
    return exported
