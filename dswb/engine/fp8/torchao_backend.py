"""`fp8.backend = 'torchao'`: torchao's float8 training (`convert_to_float8_training`), for comparison.

An optional extra (`pip install 'dswb[torchao]'`). torchao's recipes are per tensor
(`tensorwise`) or per row (`rowwise`), so the granularities must all be `tensor` or all `row`
(checked when the config is loaded). The same module filter as dswb's conversion decides which
layers are converted. Without FP8 tensor cores torchao runs its emulation (`emulate=True`).
torchao does not expose its amax/saturation statistics, so no `fp8` events are written with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from dswb.engine.fp8.convert import INFO_ATTR, Fp8Info, keep_reason, layer_group, linear_candidates
from dswb.engine.fp8.recipe import Fp8Recipe
from dswb.errors import UserError

RECIPES = {"tensor": "tensorwise", "row": "rowwise"}


def torchao_recipe(cfg: Any) -> str:
    grans = {cfg.activations, cfg.weights, cfg.gradients}
    if len(grans) != 1 or next(iter(grans)) not in RECIPES:
        return ""
    return RECIPES[next(iter(grans))]


def has_fp8_tensor_cores(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def convert_with_torchao(model: torch.nn.Module, cfg: Any, device: torch.device) -> torch.nn.Module:
    try:
        import torchao
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise UserError("fp8.backend = 'torchao' needs torchao: pip install 'dswb[torchao]'") from None
    recipe_name = torchao_recipe(cfg)
    emulate = not has_fp8_tensor_cores(device)
    config = Float8LinearConfig.from_recipe_name(recipe_name)
    config = dataclasses.replace(config, emulate=emulate, round_scales_to_power_of_2=cfg.power_of_two)
    kept = {name: reason for name, layer in linear_candidates(model) if (reason := keep_reason(name, layer, cfg))}
    convert_to_float8_training(model, config=config, module_filter_fn=lambda module, fqn: fqn not in kept)
    info = Fp8Info(backend="torchao", recipe=Fp8Recipe.from_config(cfg), stats_supported=False,
                   gemm_line=f"FP8 GEMMs: torchao {torchao.__version__} recipe '{recipe_name}'"
                             f"{' (emulate: no FP8 tensor cores here)' if emulate else ''}; "
                             f"no FP8 statistics with torchao")
    info.kept = sorted(kept.items())
    info.converted = [(name, layer_group(name)) for name, module in model.named_modules()
                      if type(module).__module__.startswith("torchao.") and isinstance(module, torch.nn.Linear)]
    setattr(model, INFO_ATTR, info)
    return model
