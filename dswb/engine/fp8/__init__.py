"""FP8 training in the DeepSeek-V3 style: exact on any machine, fast where `scaled_mm` runs.

- `quantize.py`: the pure quantizer (tensor, row, 1x128 tile, 128x128 block; E4M3/E5M2).
- `recipe.py`: granularities, formats and scaling of an FP8 linear (DeepSeek-V3 by default).
- `gemm.py` / `backends.py`: the FP8 GEMM backends (`emulated`, `scaled_mm`) and `auto`.
- `linear.py`: `Fp8Linear`, whose forward, input-gradient and weight-gradient GEMMs run in FP8.
- `convert.py`: which linears become FP8, layer groups, export to a plain model.
- `stats.py` / `monitor.py`: amax, scale, saturation and underflow per layer group -> `fp8` events,
  metrics and alerts; the shadow high-precision loss check.
- `torchao_backend.py`: torchao's float8 training as an optional backend, for comparison.

`apply_fp8(model, cfg, device)` is what `transforms.prepare_model` calls when `[fp8] enabled`.
"""

from __future__ import annotations

import torch

from dswb.engine.fp8.backends import resolve_gemms
from dswb.engine.fp8.convert import convert_model, export_model, fp8_disabled, fp8_info, fp8_layers
from dswb.engine.fp8.linear import Fp8Linear
from dswb.engine.fp8.quantize import dequantize, quantize
from dswb.engine.fp8.recipe import Fp8Recipe

__all__ = ["Fp8Linear", "Fp8Recipe", "apply_fp8", "dequantize", "export_model", "fp8_disabled", "fp8_info",
           "fp8_layers", "quantize"]


def apply_fp8(model: torch.nn.Module, cfg, device: torch.device) -> torch.nn.Module:
    """Convert `model`'s suitable linear layers to FP8 as `cfg` (the `[fp8]` section) says."""
    if cfg.backend == "torchao":
        from dswb.engine.fp8.torchao_backend import convert_with_torchao

        return convert_with_torchao(model, cfg, device)
    gemms, line = resolve_gemms(cfg.backend, Fp8Recipe.from_config(cfg), device)
    return convert_model(model, cfg, gemms, line)
