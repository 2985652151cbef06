"""The FP8 quantizer: one pure function per formula, the same on every device.

`quantize(x, granularity)` returns `(q, scale)` with `x ~= q.float() * scale` where the scale is
broadcast per granularity (`expand_scale` does the broadcast, `dequantize` the product):

- `tensor`: one scale (a 0-d tensor);
- `row`:    one scale per row, shape `(*rows, 1)`;
- `tile`:   one scale per 1 x 128 tile of the last dimension, shape `(*rows, ceil(cols / 128))`
            (DeepSeek-V3's activation quantization, per token per 128 channels);
- `block`:  one scale per 128 x 128 block of a matrix, shape `(ceil(rows / 128), ceil(cols / 128))`
            (DeepSeek-V3's weight quantization).

The scale is the dequantization multiplier `s = amax / fp8_max` (448 for E4M3, 57344 for E5M2),
`q = cast(clamp(x / s, -fp8_max, fp8_max))`, exactly DeepSeek-V3's `act_quant` / `weight_quant`.
Saturation is explicit (values whose magnitude exceeds `fp8_max * s`, possible only when the amax
comes from elsewhere, e.g. delayed scaling, are clamped, never turned into NaN/Inf); the amax is
floored (`AMAX_FLOOR`) so an all-zero tile gets a tiny finite scale and zeros, not NaN.
Dimensions that are not multiples of 128 are zero-padded for the amax (zeros change no amax) and
the padding is cut off again: the last partial tile or block has its own scale.
"""

from __future__ import annotations

import torch

TILE = 128
GRANULARITIES = ("tensor", "row", "tile", "block")
AMAX_FLOOR = 1e-12
FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def fp8_max(dtype: torch.dtype) -> float:
    """The largest finite value of an FP8 format: 448 (E4M3), 57344 (E5M2)."""
    return float(torch.finfo(dtype).max)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pad_to(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Zero-pad the last two dims of `x` (2-D) to `rows x cols`."""
    pad_r, pad_c = rows - x.shape[-2], cols - x.shape[-1]
    if pad_r == 0 and pad_c == 0:
        return x
    return torch.nn.functional.pad(x, (0, pad_c, 0, pad_r))


def _grouped(x: torch.Tensor, granularity: str) -> torch.Tensor:
    """`x` (FP32) zero-padded and viewed so that each scaling group is reduced over the size-1 or
    128 dims: tile -> (*rows, tiles, 128), block -> (row blocks, 128, col blocks, 128)."""
    cols = x.shape[-1]
    if granularity == "tile":
        padded = torch.nn.functional.pad(x, (0, ceil_div(cols, TILE) * TILE - cols))
        return padded.reshape(*x.shape[:-1], -1, TILE)
    if x.dim() != 2:
        raise ValueError(f"block granularity needs a matrix, got shape {tuple(x.shape)}")
    rb, cb = ceil_div(x.shape[0], TILE), ceil_div(cols, TILE)
    return _pad_to(x, rb * TILE, cb * TILE).reshape(rb, TILE, cb, TILE)


def _group_amax(x: torch.Tensor, granularity: str, grouped: torch.Tensor | None) -> torch.Tensor:
    if granularity == "tensor":
        return x.abs().amax() if x.numel() else x.new_zeros(())
    if granularity == "row":
        return x.abs().amax(dim=-1, keepdim=True)
    if granularity == "tile":
        return grouped.abs().amax(dim=-1)
    if granularity == "block":
        return grouped.abs().amax(dim=(1, 3))
    raise ValueError(f"unknown granularity {granularity!r} (choose from {', '.join(GRANULARITIES)})")


def _group_scale(scale: torch.Tensor, granularity: str) -> torch.Tensor:
    """The scale shaped to broadcast against `_grouped`'s view."""
    return scale.unsqueeze(-1) if granularity == "tile" else scale[:, None, :, None]


def _ungrouped(grouped: torch.Tensor, granularity: str, shape: torch.Size) -> torch.Tensor:
    """Back from `_grouped`'s view to `shape`, padding cut off (contiguous)."""
    if granularity == "tile":
        return grouped.reshape(*shape[:-1], -1)[..., : shape[-1]].contiguous()
    return grouped.reshape(grouped.shape[0] * TILE, -1)[: shape[0], : shape[1]].contiguous()


def round_to_power_of_two(scale: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= `scale` (exact: from the binary exponent, no log rounding).

    Rounding the scale *up* keeps `amax / scale <= fp8_max`, so nothing saturates; as in the
    UE8M0 scales of DeepSeek's later models, the scale then costs only an exponent shift."""
    mantissa, exponent = torch.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent)
    return torch.ldexp(torch.ones_like(scale), exponent)


def scale_from_amax(amax: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn, power_of_two: bool = False,
                    amax_floor: float = AMAX_FLOOR) -> torch.Tensor:
    """The dequantization multiplier `max(amax, floor) / fp8_max` (optionally a power of two)."""
    scale = amax.float().clamp(min=amax_floor) / fp8_max(dtype)
    return round_to_power_of_two(scale) if power_of_two else scale


def expand_scale(scale: torch.Tensor, granularity: str, shape: torch.Size | tuple) -> torch.Tensor:
    """The scale broadcast to one value per element of a tensor of `shape` (for dequantizing)."""
    if granularity in ("tensor", "row"):
        return scale.expand(shape)
    rows, cols = shape[-2] if len(shape) > 1 else 1, shape[-1]
    if granularity == "tile":
        return scale.repeat_interleave(TILE, dim=-1)[..., :cols].expand(shape)
    if granularity == "block":
        full = scale.repeat_interleave(TILE, dim=0).repeat_interleave(TILE, dim=1)
        return full[:rows, :cols]
    raise ValueError(f"unknown granularity {granularity!r}")


def quantize_with_amax(x: torch.Tensor, granularity: str, dtype: torch.dtype = torch.float8_e4m3fn, *,
                       amax: torch.Tensor | None = None, power_of_two: bool = False,
                       amax_floor: float = AMAX_FLOOR) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`quantize`, also returning the measured amax per group (delayed scaling records it while
    its scale comes from the history, passed as `amax`)."""
    x = x.float()
    grouped = _grouped(x, granularity) if granularity in ("tile", "block") else None
    measured = _group_amax(x, granularity, grouped)
    scale = scale_from_amax(measured if amax is None else amax, dtype, power_of_two, amax_floor)
    limit = fp8_max(dtype)
    if grouped is None:
        return (x / scale).clamp(-limit, limit).to(dtype), scale, measured
    q = (grouped / _group_scale(scale, granularity)).clamp(-limit, limit).to(dtype)
    return _ungrouped(q, granularity, x.shape), scale, measured


def quantize(x: torch.Tensor, granularity: str, dtype: torch.dtype = torch.float8_e4m3fn, *,
             amax: torch.Tensor | None = None, power_of_two: bool = False,
             amax_floor: float = AMAX_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
    """`(q, scale)`: `q` has `x`'s shape and the FP8 `dtype`; `scale` is FP32 per granularity.

    `amax` overrides the measured absolute maximum (delayed scaling passes its history's max);
    it must have the scale's shape."""
    q, scale, _ = quantize_with_amax(x, granularity, dtype, amax=amax, power_of_two=power_of_two,
                                     amax_floor=amax_floor)
    return q, scale


_FP32_OF_BITS: dict[torch.dtype, torch.Tensor] = {}


def to_float(q: torch.Tensor) -> torch.Tensor:
    """`q.float()`, the same values; on a CPU read from a 256-entry table, ~2x faster than the cast."""
    if q.device.type != "cpu":
        return q.float()
    table = _FP32_OF_BITS.get(q.dtype)
    if table is None:
        table = _FP32_OF_BITS[q.dtype] = torch.arange(256, dtype=torch.uint8).view(q.dtype).float()
    return table.index_select(0, q.reshape(-1).view(torch.uint8).long()).view(q.shape)


def dequantize(q: torch.Tensor, scale: torch.Tensor, granularity: str) -> torch.Tensor:
    """`q.float() * scale` with the scale broadcast per granularity (FP32)."""
    x = to_float(q)
    if granularity in ("tensor", "row"):
        return x * scale
    return _ungrouped(_grouped(x, granularity) * _group_scale(scale, granularity), granularity, x.shape)


def is_zero(q: torch.Tensor) -> torch.Tensor:
    """Elementwise `q == 0` for FP8 tensors (+0 and -0), read from the bits on any device."""
    return (q.view(torch.uint8) & 0x7F) == 0


def quant_counts(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, granularity: str) -> dict[str, float]:
    """Health counts of one quantization: elements, non-zero inputs, saturated, flushed to zero.

    Saturated: |x| / scale above the format's maximum (clamped; the 1e-6 margin ignores the
    rounding of `amax / (amax / 448)` itself). Flushed to zero: a non-zero input whose FP8 value
    is 0 (below half the smallest subnormal after scaling)."""
    x = x.float()
    limit = fp8_max(q.dtype) * (1 + 1e-6)
    nonzero = x != 0
    saturated = (x.abs() / expand_scale(scale, granularity, x.shape)) > limit
    underflow = nonzero & is_zero(q)
    return {"n": float(x.numel()), "nonzero": float(nonzero.sum()), "saturated": float(saturated.sum()),
            "underflow": float(underflow.sum())}
