"""FP8 GEMM backends behind one interface: `backend(a, b, out_dtype) = a @ b.T`.

Both operands arrive quantized along their last dimension K (the contraction), as `Operand`s:
`a` is `(M, K)`, `b` is `(N, K)`, each FP8 with its scale per granularity.

- `emulated`: runs everywhere, every granularity: both operands dequantized to FP32 and
  multiplied in FP32 (bit for bit what `scaled_mm` computes on a CPU, per tensor and per row).
  Every product and partial sum is FP32, so this is at least as exact as the promotion that
  DeepSeek-V3's kernel does because its tensor cores accumulate in less than FP32: partial sums
  over each 128 of K, scaled by that chunk's scales and accumulated in FP32
  (`acc += dot(a, b) * a_s[:, None] * b_s[None, :]`), written out as `promoted_mm` (the two agree
  to FP32 rounding; the tests check it).
- `scaled_mm`: `torch._scaled_mm` (GPU) / `torch.nn.functional.scaled_mm` (CPU, and blockwise):
  tensorwise and rowwise on CPU and SM 8.9+ GPUs, blockwise 1x128 / 128x128 where the installed
  torch and GPU run it. What a machine supports is probed once per device (`probe_scaled_mm`) against the
  emulation, so `auto` never picks a path that errors or disagrees.

CUDA's layout rules for `scaled_mm` (checked on `meta` tensors in the tests): `b` column-major,
K and both dims of `b` multiples of 16 (blockwise: K and block dims multiples of 128, scales in
the documented strides). `multiples()` says how far the caller pads each operand with zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from dswb.engine.fp8.quantize import TILE, ceil_div, dequantize, quantize, to_float

HAS_F_SCALED_MM = hasattr(torch.nn.functional, "scaled_mm")
BLOCKWISE_PAIRS = {("tile", "block"), ("tile", "tile"), ("block", "tile")}


@dataclass
class Operand:
    q: torch.Tensor       # (rows, K), FP8, row-major
    scale: torch.Tensor   # FP32, per granularity of q
    granularity: str
    _dequantized: torch.Tensor | None = None   # the emulation's FP32 copy, kept for reuse in backward

    def dequantized(self) -> torch.Tensor:
        if self._dequantized is None:
            self._dequantized = dequantize(self.q, self.scale, self.granularity)
        return self._dequantized

    def transposed(self) -> "Operand":
        """The operand of the transposed tensor (per-tensor and block scales only: theirs transpose too)."""
        scale = self.scale.t() if self.granularity == "block" else self.scale
        deq = None if self._dequantized is None else self._dequantized.t()
        return Operand(self.q.t().contiguous(), scale, self.granularity, deq)


def _k_scales(op: Operand) -> torch.Tensor:
    """The operand's scale as (rows or 1, K-chunks or 1): one factor per row and 128 of K."""
    s, gran = op.scale, op.granularity
    if gran == "tensor":
        return s.reshape(1, 1)
    if gran == "row":
        return s.reshape(-1, 1)
    if gran == "tile":
        return s.reshape(-1, s.shape[-1])
    return s.repeat_interleave(TILE, dim=0)[: op.q.shape[0]]   # block: rows expanded, K-chunks kept


def promoted_mm(a: Operand, b: Operand) -> torch.Tensor:
    """`a @ b.T` as DeepSeek-V3's FP8 GEMM computes it: FP32 partial sums over each 128 of K,
    scaled by that chunk's scales and accumulated in FP32 (the reference for `emulated_mm`)."""
    sa, sb = _k_scales(a), _k_scales(b)
    k = a.q.shape[1]
    out = torch.zeros(a.q.shape[0], b.q.shape[0], dtype=torch.float32, device=a.q.device)
    for chunk in range(ceil_div(k, TILE)):
        cols = slice(chunk * TILE, min(k, (chunk + 1) * TILE))
        partial = to_float(a.q[:, cols]) @ to_float(b.q[:, cols]).t()
        ca = sa[:, chunk if sa.shape[1] > 1 else 0].reshape(-1, 1)
        cb = sb[:, chunk if sb.shape[1] > 1 else 0].reshape(1, -1)
        out += partial * ca * cb
    return out


def emulated_mm(a: Operand, b: Operand, out_dtype: torch.dtype) -> torch.Tensor:
    return (a.dequantized() @ b.dequantized().t()).to(out_dtype)


class EmulatedGemm:
    name = "emulated"

    def supports(self, gran_a: str, gran_b: str) -> bool:
        return True

    def multiples(self, gran_a: str, gran_b: str) -> tuple[int, int, int]:
        return 1, 1, 1

    def __call__(self, a: Operand, b: Operand, out_dtype: torch.dtype) -> torch.Tensor:
        return emulated_mm(a, b, out_dtype)

    def describe(self, gran_a: str, gran_b: str) -> str:
        return "emulated"


def _scaling_type(gran: str):
    kinds = torch.nn.functional.ScalingType
    return {"tensor": kinds.TensorWise, "row": kinds.RowWise, "tile": kinds.BlockWise1x128,
            "block": kinds.BlockWise128x128}[gran]


def scale_layout(op: Operand, side: str, k: int) -> torch.Tensor:
    """The scale in the shape and strides `scaled_mm` wants for operand `side` ('a' or 'b')."""
    s, gran, rows = op.scale.float(), op.granularity, op.q.shape[0]
    if gran == "tensor":
        return s.reshape(())
    if gran == "row":
        return s.reshape(rows, 1).contiguous() if side == "a" else s.reshape(1, rows).contiguous()
    if gran == "tile":   # (rows, K/128) with stride (1, rows): column-major
        return s.reshape(rows, -1).t().contiguous().t()
    kb = k // TILE     # block: [round_up(K/128, 4), rows/128] with stride (1, L4)
    l4 = ceil_div(kb, 4) * 4
    padded = torch.ones(s.shape[0], l4, dtype=torch.float32, device=s.device)
    padded[:, :kb] = s
    return padded.t()


def _rowwise(op: Operand, side: str) -> torch.Tensor:
    rows = op.q.shape[0]
    s = op.scale.float().reshape(-1, 1).expand(rows, 1)
    return s.contiguous() if side == "a" else s.reshape(1, rows).contiguous()


def scaled_mm_call(a: Operand, b: Operand, out_dtype: torch.dtype) -> torch.Tensor:
    """One `scaled_mm` call: `a.q` row-major (M, K), `b.q` row-major (N, K) passed as (K, N) column-major.

    Per tensor and per row: `torch._scaled_mm` on a GPU (the op inductor lowers with its layout
    constraints, as torchao uses it), the newer `torch.nn.functional.scaled_mm` on a CPU (where it
    equals the emulation bit for bit; `_scaled_mm`'s CPU per-tensor path rounds differently)."""
    grans = (a.granularity, b.granularity)
    bt = b.q.t()
    if set(grans) <= {"tensor", "row"}:
        rowwise = grans != ("tensor", "tensor")   # mixed: a tensor scale is a constant row scale
        sa = _rowwise(a, "a") if rowwise else scale_layout(a, "a", 0)
        sb = _rowwise(b, "b") if rowwise else scale_layout(b, "b", 0)
        if HAS_F_SCALED_MM and a.q.device.type == "cpu":
            kind = _scaling_type("row" if rowwise else "tensor")
            return torch.nn.functional.scaled_mm(a.q, bt, sa, kind, sb, kind, output_dtype=out_dtype)
        return torch._scaled_mm(a.q, bt, sa, sb, out_dtype=out_dtype)
    k = a.q.shape[1]
    return torch.nn.functional.scaled_mm(a.q, bt, scale_layout(a, "a", k), _scaling_type(a.granularity),
                                         scale_layout(b, "b", k), _scaling_type(b.granularity),
                                         output_dtype=out_dtype)


def gemm_kind(gran_a: str, gran_b: str) -> str:
    """`tensor`, `row`, a blockwise pair such as `tilexblock`, or `unsupported` (no scaled_mm kernel)."""
    if {gran_a, gran_b} <= {"tensor", "row"}:
        return "tensor" if gran_a == gran_b == "tensor" else "row"
    return f"{gran_a}x{gran_b}" if (gran_a, gran_b) in BLOCKWISE_PAIRS else "unsupported"


def _key(kind: str, a_dtype: torch.dtype) -> str:
    return kind if a_dtype == torch.float8_e4m3fn else f"{kind}/e5m2"   # E5M2 gradients x E4M3


class ScaledMmGemm:
    """`scaled_mm` for the kinds `probe_scaled_mm` found working on this device."""

    name = "scaled_mm"

    def __init__(self, kinds: dict[str, torch.dtype | None]) -> None:
        self.kinds = kinds   # kind -> output dtype it runs with (None: not supported here)

    def supports(self, gran_a: str, gran_b: str, a_dtype: torch.dtype = torch.float8_e4m3fn) -> bool:
        return self.kinds.get(_key(gemm_kind(gran_a, gran_b), a_dtype)) is not None

    def multiples(self, gran_a: str, gran_b: str) -> tuple[int, int, int]:
        if gemm_kind(gran_a, gran_b) in ("tensor", "row"):
            return 1, 16, 16
        return (TILE if gran_a == "block" else 1), TILE, (TILE if gran_b == "block" else 16)

    def __call__(self, a: Operand, b: Operand, out_dtype: torch.dtype) -> torch.Tensor:
        run_dtype = self.kinds[_key(gemm_kind(a.granularity, b.granularity), a.q.dtype)]
        if out_dtype != torch.float32 or run_dtype == torch.float32:
            return scaled_mm_call(a, b, out_dtype)
        return scaled_mm_call(a, b, run_dtype).float()   # this GPU's kernel writes bf16 only

    def describe(self, gran_a: str, gran_b: str) -> str:
        kind = gemm_kind(gran_a, gran_b)
        out = "" if self.kinds.get(kind) == torch.float32 else ", bf16 out"
        return f"scaled_mm ({kind}{out})"


def _probe_kind(kind: str, device: torch.device, a_dtype: torch.dtype) -> tuple[torch.dtype | None, str]:
    """Run one small `scaled_mm` of `kind` and compare with the emulation: (output dtype, why not)."""
    gran_a, gran_b = {"tensor": ("tensor", "tensor"), "row": ("row", "row")}.get(kind) or kind.split("x")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 384, generator=gen).to(device)
    w = torch.randn(256, 384, generator=gen).to(device)
    a, b = Operand(*quantize(x, gran_a, a_dtype), gran_a), Operand(*quantize(w, gran_b), gran_b)
    expected = emulated_mm(a, b, torch.float32)
    last = "not supported"
    for dtype in (torch.float32, torch.bfloat16):
        try:
            got = scaled_mm_call(a, b, dtype).float()
        except (RuntimeError, ValueError, NotImplementedError, TypeError, AttributeError) as exc:
            last = " ".join(str(exc).split())[:160]
            continue
        err = float((got - expected).norm() / expected.norm())
        if err < (1e-5 if dtype == torch.float32 else 1e-2):
            return dtype, ""
        last = f"disagrees with the emulation (relative error {err:.2g})"
    return None, last


@lru_cache(maxsize=None)
def probe_scaled_mm(device_type: str, index: int | None = None) -> tuple[dict, dict]:
    """Which `scaled_mm` kinds run correctly on this device: ({kind: out dtype or None}, {kind: why not})."""
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    kinds, why = {}, {}
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return {}, {"all": f"{name} has no FP8 tensor cores (needs compute capability 8.9+)"}
    blockwise = ["tilexblock", "tilextile", "blockxtile"]
    candidates = ["tensor", "row"] + (blockwise if HAS_F_SCALED_MM and device.type == "cuda" else [])
    for kind in candidates:
        for a_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            key = _key(kind, a_dtype)
            kinds[key], reason = _probe_kind(kind, device, a_dtype)
            if reason:
                why[key] = reason
    if not HAS_F_SCALED_MM:
        why["blockwise"] = f"torch {torch.__version__} has no torch.nn.functional.scaled_mm"
    elif device.type != "cuda":
        why["blockwise"] = f"scaled_mm on {device.type} runs per-tensor and per-row scaling only"
    return kinds, why
