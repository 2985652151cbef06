"""The FP8 quantizer: DeepSeek-V3's tiles and blocks exactly, error bounds per granularity (with the
outlier case), power-of-two scales, all-zero groups, explicit saturation, E5M2, health counts."""

from __future__ import annotations

import pytest
import torch

from dswb.engine.fp8.quantize import (GRANULARITIES, dequantize, fp8_max, quant_counts, quantize,
                                      round_to_power_of_two, to_float)

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def deepseek_act_quant(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's published `act_quant` (inference/kernel.py), written in torch: per 1 x 128 tile
    of the last dim, `s = amax / 448`, `y = cast(x / s)`; the last dim must be a multiple of 128."""
    tiles = x.float().reshape(*x.shape[:-1], -1, block)
    s = tiles.abs().amax(dim=-1) / 448.0
    y = (tiles / s.unsqueeze(-1)).to(E4M3).reshape(x.shape)
    return y, s


def deepseek_weight_quant(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's `weight_quant`: one `s = amax / 448` per 128 x 128 block (dims multiples of 128 here)."""
    m, n = w.shape
    blocks = w.float().reshape(m // block, block, n // block, block)
    s = blocks.abs().amax(dim=(1, 3)) / 448.0
    y = (blocks / s[:, None, :, None]).to(E4M3).reshape(m, n)
    return y, s


def bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)


def test_tiles_and_blocks_equal_deepseek_v3s_quantizer():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 256, 384, generator=gen) * torch.logspace(-3, 2, 384)
    q, s = quantize(x, "tile")
    ref_q, ref_s = deepseek_act_quant(x)
    assert s.shape == (6, 256, 3)
    assert torch.equal(s, ref_s) and torch.equal(bits(q), bits(ref_q))

    w = torch.randn(384, 256, generator=gen) * 0.02
    q, s = quantize(w, "block")
    ref_q, ref_s = deepseek_weight_quant(w)
    assert s.shape == (3, 2)
    assert torch.equal(s, ref_s) and torch.equal(bits(q), bits(ref_q))


@pytest.mark.parametrize("granularity", ["tile", "block"])
def test_dims_that_are_not_multiples_of_128_quantize_as_if_zero_padded(granularity):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 300, generator=gen)
    q, s = quantize(x, granularity)
    padded = torch.zeros(256, 384)
    padded[:200, :300] = x
    ref = deepseek_act_quant(padded) if granularity == "tile" else deepseek_weight_quant(padded)
    ref_s = ref[1][:200] if granularity == "tile" else ref[1]
    assert q.shape == x.shape and s.shape == ((200, 3) if granularity == "tile" else (2, 3))
    assert torch.equal(s, ref_s)
    assert torch.equal(bits(q), bits(ref[0][:200, :300]))
    # the partial last tile/block has its own scale: its amax, not a neighbour's
    tail = x[:, 256:] if granularity == "tile" else x[128:, 256:]
    last = s[:, 2] if granularity == "tile" else s[1, 2]
    expected = tail.abs().amax(dim=1) / 448 if granularity == "tile" else tail.abs().amax() / 448
    assert torch.equal(last, expected)


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_error_is_within_half_an_fp8_step(granularity, dtype):
    """|dequant - x| <= 2^-(mantissa+1) |x| for normal values, half the subnormal spacing below."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(256, 384, generator=gen) * torch.logspace(-2, 1, 384)
    q, s = quantize(x, granularity, dtype)
    err = (dequantize(q, s, granularity) - x).abs()
    mantissa, min_exp = (3, -6) if dtype == E4M3 else (2, -14)
    scale = dequantize(torch.ones_like(q), s, granularity)   # the scale of every element
    bound = torch.maximum(x.abs() * 2.0 ** -(mantissa + 1), scale * 2.0 ** (min_exp - mantissa - 1))
    assert (err <= bound * (1 + 1e-5)).all()
    assert float(err.norm() / x.norm()) < (0.04 if dtype == E4M3 else 0.08)


def test_outlier_per_tensor_loses_small_rows_finer_granularities_do_not():
    """The notes' trial: half the rows 1e-4 smaller and one outlier. One scale for the tensor flushes
    the small rows to zero; per-row, tile and block scales keep them within FP8 precision."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(256, 512, generator=gen)
    x[128:] *= 1e-4
    x[0, 0] = 1000.0
    small = x[128:]
    errors = {}
    for granularity in GRANULARITIES:
        q, s = quantize(x, granularity)
        errors[granularity] = float((dequantize(q, s, granularity)[128:] - small).norm() / small.norm())
    assert errors["tensor"] > 0.9
    for granularity in ("row", "tile", "block"):
        assert errors[granularity] < 0.04, errors


def test_power_of_two_scales_are_exact_powers_that_never_saturate():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(128, 384, generator=gen) * 3.7
    for granularity in GRANULARITIES:
        q, s = quantize(x, granularity, power_of_two=True)
        mantissa, _ = torch.frexp(s)
        assert torch.all(mantissa == 0.5), granularity          # s = 2^k exactly
        exact = quantize(x, granularity)[1]
        assert torch.all(s >= exact) and torch.all(s < 2 * exact)
        assert quant_counts(x, q, s, granularity)["saturated"] == 0
        # dividing by a power of two is exact: the scaled values are x's own bits, shifted
        scaled = x / dequantize(torch.ones_like(q), s, granularity)
        assert torch.equal(scaled * dequantize(torch.ones_like(q), s, granularity), x)


def test_round_to_power_of_two():
    s = torch.tensor([0.5, 0.75, 1.0, 1.0001, 3e-5, 448.0])
    assert round_to_power_of_two(s).tolist() == [0.5, 1.0, 1.0, 2.0, 2.0 ** -15, 512.0]


@pytest.mark.parametrize("power_of_two", [False, True])
def test_all_zero_groups_give_finite_scales_and_exact_zeros(power_of_two):
    x = torch.randn(256, 384)
    x[:, 128:256] = 0          # a zero tile column
    x[128:, :] = 0             # zero rows and blocks
    for granularity in GRANULARITIES:
        for tensor in (x, torch.zeros(256, 384)):
            q, s = quantize(tensor, granularity, power_of_two=power_of_two)
            deq = dequantize(q, s, granularity)
            assert torch.isfinite(s).all() and (s > 0).all()
            assert torch.isfinite(deq).all()
            assert torch.equal(deq[tensor == 0], torch.zeros(int((tensor == 0).sum())))


def test_saturation_is_explicit_and_counted():
    x = torch.tensor([[1.0, -2.0, 4.0, 0.5]])
    for dtype in (E4M3, E5M2):
        q, s = quantize(x, "tensor", dtype, amax=torch.tensor(1.0))   # an amax too small, as a stale history gives
        deq = dequantize(q, s, "tensor")
        assert torch.isfinite(deq).all()
        assert deq.tolist()[0] == [1.0, -1.0, 1.0, 0.5]
        assert quant_counts(x, q, s, "tensor")["saturated"] == 2
    assert fp8_max(E4M3) == 448.0 and fp8_max(E5M2) == 57344.0


def test_underflow_counts_nonzero_values_flushed_to_zero():
    x = torch.tensor([[448.0, 1e-6, -1e-7, 0.0, 1.0]])
    q, s = quantize(x, "tensor")
    counts = quant_counts(x, q, s, "tensor")
    assert counts == {"n": 5.0, "nonzero": 4.0, "saturated": 0.0, "underflow": 2.0}


def test_table_conversion_equals_the_cast():
    every = torch.arange(256, dtype=torch.uint8)
    for dtype in (E4M3, E5M2):
        q = every.view(dtype)
        finite = torch.isfinite(q.float())
        assert torch.equal(to_float(q)[finite], q.float()[finite])
        assert torch.equal(to_float(q.reshape(16, 16)).reshape(-1)[finite], q.float()[finite])
