"""Turn a model's linear layers into FP8 layers, and back into a plain model for export.

Only `nn.Linear` layers are candidates (embeddings and norms are other modules and always stay
high precision). A linear stays high precision when its name matches a skip pattern (`fp8.skip`,
fnmatch globs on the dotted name: the output head, MoE routers, reward and value heads by
default), when a dimension is under `fp8.min_dim`, or when a dimension is not a multiple of
`fp8.multiple_of` (FP8 GEMMs need multiples of 16). The conversion is recorded on the model
(`fp8_info`) so the stage can log what was converted and why the rest was not.
"""

from __future__ import annotations

import copy
import fnmatch
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


@dataclass
class Fp8Info:
    """What the conversion did, for the run log and the statistics."""

    backend: str
    recipe: Fp8Recipe
    gemm_line: str
    converted: list[tuple[str, str]] = field(default_factory=list)   # (name, group)
    kept: list[tuple[str, str]] = field(default_factory=list)        # (name, reason)
    stats_supported: bool = True

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
                f"kept in high precision: {kept or 'none'}{more}"]


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
    return getattr(model, INFO_ATTR, None)


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
