"""Pick the GEMM backend of each of the three FP8 GEMMs, and say which in one log line.

- `emulated`: every GEMM emulated (any device, any granularity).
- `scaled_mm`: every GEMM through `scaled_mm`; a GEMM this machine cannot run that way is a
  `UserError` naming it (e.g. blockwise scaling on a CPU).
- `auto`: on a GPU with FP8 tensor cores (compute capability 8.9+), `scaled_mm` for every GEMM
  the probe found working, the emulation for the rest; on a CPU or an older GPU, the emulation
  (a CPU has no FP8 matrix units: there FP8 is about numerics, and the emulation is the reference).
- `torchao`: torchao's own `Float8Linear` (see `torchao_backend.py`), not these GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dswb.engine.fp8.gemm import EmulatedGemm, ScaledMmGemm, gemm_kind, probe_scaled_mm
from dswb.engine.fp8.recipe import Fp8Recipe
from dswb.errors import UserError

EMULATED_NOTE = "dequantize + FP32 matmul, every partial sum in FP32"


@dataclass
class Gemms:
    forward: Any
    dgrad: Any
    wgrad: Any


def gemm_pairs(recipe: Fp8Recipe) -> dict[str, tuple[str, str]]:
    """The operand granularities (a, b) of each GEMM of an FP8 linear."""
    return {"forward": (recipe.activations, recipe.weights), "dgrad": (recipe.gradients, recipe.weights),
            "wgrad": (recipe.gradients, recipe.activations)}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def resolve_gemms(backend: str, recipe: Fp8Recipe, device: torch.device) -> tuple[Gemms, str]:
    """The backend of each GEMM and the one line that says what was chosen and why."""
    emulated = EmulatedGemm()
    if backend == "emulated":
        return Gemms(emulated, emulated, emulated), f"FP8 GEMMs: emulated ({EMULATED_NOTE}) [fp8.backend = emulated]"
    if backend == "auto" and device.type != "cuda":
        return (Gemms(emulated, emulated, emulated),
                f"FP8 GEMMs: emulated ({EMULATED_NOTE}) [auto: {device.type} has no FP8 matrix units]")
    kinds, why = probe_scaled_mm(device.type, device.index)
    scaled = ScaledMmGemm(kinds)
    chosen, parts = {}, []
    for gemm, (gran_a, gran_b) in gemm_pairs(recipe).items():
        a_dtype = recipe.dtype("input" if gemm == "forward" else "grad")
        if scaled.supports(gran_a, gran_b, a_dtype):
            chosen[gemm] = scaled
            parts.append(f"{gemm} {scaled.describe(gran_a, gran_b)}")
            continue
        kind = gemm_kind(gran_a, gran_b)
        if kind == "unsupported":
            reason = "scaled_mm has no kernel for this pair of scalings"
        else:
            key = kind if a_dtype == torch.float8_e4m3fn else f"{kind}/e5m2"
            reason = why.get("all") or why.get(key) or why.get("blockwise") or "not supported"
        if backend == "scaled_mm":
            raise UserError(f"fp8.backend = 'scaled_mm': the {gemm} GEMM ({gran_a} x {gran_b} scaling) cannot run on "
                            f"{device_name(device)} ({reason}); use fp8.backend = 'auto' or 'emulated'")
        chosen[gemm] = emulated
        parts.append(f"{gemm} emulated ({gran_a} x {gran_b}: {reason})")
    return Gemms(**chosen), f"FP8 GEMMs on {device_name(device)}: {'; '.join(parts)} [fp8.backend = {backend}]"
