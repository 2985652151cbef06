"""The FP8 linear layer: three GEMMs in FP8, FP32 master weights, high-precision output.

`Fp8Linear` is an `nn.Linear` (same `weight` / `bias` parameters, same state-dict names) whose
forward runs `Fp8LinearFunction`:

    forward  y  = x @ W.T      a = x      (M, K)  activations granularity,  b = W   (N, K) weights
    dgrad    dx = dy @ W       a = dy     (M, N)  gradients granularity,    b = W.T (K, N) weights
    wgrad    dW = dy.T @ x     a = dy.T   (N, M)  gradients granularity,    b = x.T (K, M) activations

Each operand is quantized along its GEMM's contraction dimension (see `recipe.py`); per-tensor and
128 x 128 block quantizations of W are reused transposed for dgrad, as DeepSeek-V3 does. The input
is kept in its own precision for the backward pass and re-quantized along the tokens for wgrad.
Outputs: y in the autocast dtype (BF16 on a GPU) or the input's dtype, dx in the input's dtype,
dW in FP32 for the FP32 master weight.

Per-tensor amax history (3 x history_len, rows input / weight / grad) is a persistent buffer, so
checkpoints carry it; delayed scaling takes its scale from it. Histories and statistics are only
updated by training passes (grad enabled), never by evaluation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dswb.engine.fp8.gemm import Operand
from dswb.engine.fp8.quantize import ceil_div, quant_counts, quantize_with_amax
from dswb.engine.fp8.recipe import ROLES, Fp8Recipe

ROLE_INDEX = {role: i for i, role in enumerate(ROLES)}


def _pad(t: torch.Tensor, row_multiple: int, col_multiple: int) -> torch.Tensor:
    rows, cols = t.shape
    pad_r = ceil_div(rows, row_multiple) * row_multiple - rows
    pad_c = ceil_div(cols, col_multiple) * col_multiple - cols
    return F.pad(t, (0, pad_c, 0, pad_r)) if pad_r or pad_c else t


class Fp8Linear(torch.nn.Linear):
    """A `nn.Linear` computed in FP8; `fp8_enabled = False` makes it a plain linear again."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, recipe: Fp8Recipe,
                 gemms: Any, name: str = "", group: str = "", device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup(recipe, gemms, name, group)

    def _setup(self, recipe: Fp8Recipe, gemms: Any, name: str, group: str) -> None:
        self.recipe, self.gemms, self.fp8_name, self.fp8_group = recipe, gemms, name, group
        self.fp8_enabled = True
        self.recorder = None   # an `Fp8Stats` while statistics are being collected
        self.register_buffer("fp8_amax_history", torch.zeros(len(ROLES), recipe.history_len,
                                                             device=self.weight.device), persistent=True)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, recipe: Fp8Recipe, gemms: Any, name: str = "",
                    group: str = "") -> "Fp8Linear":
        """Wrap an existing layer, sharing its parameters (an optimizer built later sees the same ones)."""
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.train(linear.training)
        layer._setup(recipe, gemms, name, group)
        return layer

    def to_linear(self) -> torch.nn.Linear:
        """A plain `nn.Linear` sharing this layer's parameters (for export)."""
        plain = torch.nn.Linear.__new__(torch.nn.Linear)
        torch.nn.Module.__init__(plain)
        plain.in_features, plain.out_features = self.in_features, self.out_features
        plain.weight, plain.bias = self.weight, self.bias
        plain.train(self.training)
        return plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fp8_enabled:
            return F.linear(x, self.weight, self.bias)
        # Function.forward runs with grad disabled: whether this is a training pass is decided here.
        return Fp8LinearFunction.apply(x, self.weight, self.bias, self, torch.is_grad_enabled())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fp8={self.recipe.describe()}"

    # -- quantization with history and statistics ------------------------------------------
    @torch.no_grad()
    def quantize_operand(self, t: torch.Tensor, role: str, row_multiple: int, k_multiple: int,
                         training: bool, primary: bool = True) -> Operand:
        """Quantize `t` (2-D, contraction last) for `role`; `primary` marks the one quantization
        of that tensor per pass that updates the amax history and the statistics."""
        gran = self.recipe.granularity(role)
        t = _pad(t, row_multiple, k_multiple)
        history = self.fp8_amax_history[ROLE_INDEX[role]]
        delayed = None
        if self.recipe.scaling == "delayed":   # per tensor; the first step has no history yet
            past = history.max()
            delayed = torch.where(past > 0, past, t.float().abs().amax())
        q, scale, amax = quantize_with_amax(t, gran, self.recipe.dtype(role), amax=delayed,
                                            power_of_two=self.recipe.power_of_two)
        if training and primary:
            history.copy_(history.roll(1))
            history[0] = amax.max()
            if self.recorder is not None and self.recorder.active:
                self.recorder.add(self.fp8_group, role, float(amax.max()), float(scale.max()),
                                  quant_counts(t, q, scale, gran))
        return Operand(q, scale, gran)


def _padded(n: int, multiple: int) -> int:
    return ceil_div(n, multiple) * multiple


def _reuse_transposed(op: Operand, rows: int, k: int, row_multiple: int, k_multiple: int) -> Operand | None:
    """The operand of the transposed tensor (`rows x k` before padding) without re-quantizing, when
    its scales transpose (per tensor, 128x128 blocks) and its padding is exactly what this GEMM needs
    (so both operands of the GEMM have the same padded K)."""
    if op.granularity not in ("tensor", "block"):
        return None
    if tuple(op.q.shape) != (_padded(k, k_multiple), _padded(rows, row_multiple)):
        return None
    return op.transposed()


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class Fp8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: Fp8Linear,
                training: bool):
        recipe, gemm = layer.recipe, layer.gemms.forward
        out_dtype = _out_dtype(x)
        x2 = x.reshape(-1, x.shape[-1])
        m, n = x2.shape[0], weight.shape[0]
        ra, rk, rb = gemm.multiples(recipe.activations, recipe.weights)
        with torch.autocast(x.device.type, enabled=False):   # the emulation's matmul stays FP32
            qx = layer.quantize_operand(x2, "input", ra, rk, training)
            qw = layer.quantize_operand(weight, "weight", rb, rk, training)
            y = gemm(qx, qw, torch.float32 if bias is not None else out_dtype)[:m, :n]
            if bias is not None:
                y = (y + bias.float()).to(out_dtype)
        ctx.layer, ctx.has_bias = layer, bias is not None
        ctx.qx = qx if recipe.activations == "tensor" else None
        ctx.qw = qw
        ctx.save_for_backward(x, weight)
        return y.reshape(*x.shape[:-1], n)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        layer: Fp8Linear = ctx.layer
        recipe, gemms = layer.recipe, layer.gemms
        x2 = x.reshape(-1, x.shape[-1])
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        m, k, n = x2.shape[0], x2.shape[1], g2.shape[1]
        grad_x = grad_w = grad_b = None

        ra, rk, rb = gemms.dgrad.multiples(recipe.gradients, recipe.weights)
        qg = layer.quantize_operand(g2, "grad", ra, rk, True)
        if ctx.needs_input_grad[0]:
            qwt = _reuse_transposed(ctx.qw, k, n, rb, rk) or layer.quantize_operand(weight.t(), "weight", rb, rk,
                                                                                     True, primary=False)
            grad_x = gemms.dgrad(qg, qwt, x.dtype)[:m, :k].reshape(x.shape)
        if ctx.needs_input_grad[1]:
            ra, rk, rb = gemms.wgrad.multiples(recipe.gradients, recipe.activations)
            qgt = _reuse_transposed(qg, n, m, ra, rk) or layer.quantize_operand(g2.t(), "grad", ra, rk, True,
                                                                                 primary=False)
            qxt = (ctx.qx is not None and _reuse_transposed(ctx.qx, k, m, rb, rk)) or layer.quantize_operand(
                x2.t(), "input", rb, rk, True, primary=False)
            grad_w = gemms.wgrad(qgt, qxt, torch.float32)[:n, :k].to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.float().sum(0).to(weight.dtype)
        ctx.qx = ctx.qw = None
        return grad_x, grad_w, grad_b, None, None
