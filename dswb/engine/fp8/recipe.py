"""What an FP8 linear layer does, as one small value: granularities, formats and scaling.

The default is DeepSeek-V3's recipe: activations and output gradients in 1 x 128 tiles, weights
in 128 x 128 blocks, E4M3 everywhere, current (online) amax scaling. Every operand of every GEMM
is quantized along that GEMM's contraction dimension, so "tile" means 1 x 128 along K in the
forward GEMM (per token) and 128 x 1 along the tokens in the weight-gradient GEMM, as DeepSeek-V3
does for its backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dswb.engine.fp8.quantize import GRANULARITIES

ROLES = ("input", "weight", "grad")   # the three tensors an FP8 linear quantizes


@dataclass(frozen=True)
class Fp8Recipe:
    activations: str = "tile"
    weights: str = "block"
    gradients: str = "tile"
    scaling: str = "current"          # current: this tensor's amax; delayed: max of the amax history
    history_len: int = 16
    power_of_two: bool = False
    e5m2_gradients: bool = False

    def __post_init__(self) -> None:
        for role, gran in zip(ROLES, (self.activations, self.weights, self.gradients)):
            if gran not in GRANULARITIES:
                raise ValueError(f"{role} granularity {gran!r} is not one of {GRANULARITIES}")
        if self.scaling == "delayed" and {self.activations, self.weights, self.gradients} != {"tensor"}:
            raise ValueError("delayed scaling keeps one amax history per tensor: it needs per-tensor granularity")

    def granularity(self, role: str) -> str:
        return {"input": self.activations, "weight": self.weights, "grad": self.gradients}[role]

    def dtype(self, role: str) -> torch.dtype:
        return torch.float8_e5m2 if role == "grad" and self.e5m2_gradients else torch.float8_e4m3fn

    def describe(self) -> str:
        grad_fmt = "E5M2" if self.e5m2_gradients else "E4M3"
        return (f"activations {self.activations}, weights {self.weights}, gradients {self.gradients} ({grad_fmt}), "
                f"{self.scaling} scaling" + (f" (history {self.history_len})" if self.scaling == "delayed" else "")
                + (", power-of-two scales" if self.power_of_two else ""))

    @classmethod
    def from_config(cls, cfg) -> "Fp8Recipe":
        return cls(activations=cfg.activations, weights=cfg.weights, gradients=cfg.gradients, scaling=cfg.scaling,
                   history_len=cfg.history_len, power_of_two=cfg.power_of_two, e5m2_gradients=cfg.e5m2_gradients)
