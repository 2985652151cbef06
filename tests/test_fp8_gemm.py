"""FP8 GEMM backends: `scaled_mm` equals the emulation bit for bit on a CPU (per tensor, per row);
CUDA's layout rules hold for what dswb passes (checked on `meta` tensors, which apply them); the
emulation agrees with DeepSeek-V3's per-128-of-K promotion; `auto` and `scaled_mm` choose honestly."""

from __future__ import annotations

import pytest
import torch

from dswb.engine.fp8.backends import resolve_gemms
from dswb.engine.fp8.gemm import (EmulatedGemm, Operand, ScaledMmGemm, emulated_mm, gemm_kind, probe_scaled_mm,
                                  promoted_mm, scaled_mm_call)
from dswb.engine.fp8.quantize import quantize
from dswb.engine.fp8.recipe import Fp8Recipe
from dswb.errors import UserError

F8 = torch.float8_e4m3fn


def operands(m: int, k: int, n: int, gran_a: str, gran_b: str, seed: int = 0) -> tuple[Operand, Operand]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen) * torch.logspace(-1, 1, k)
    b = torch.randn(n, k, generator=gen) * 0.05
    return Operand(*quantize(a, gran_a), gran_a), Operand(*quantize(b, gran_b), gran_b)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grans", [("tensor", "tensor"), ("row", "row"), ("row", "tensor"), ("tensor", "row")])
@pytest.mark.parametrize("shape", [(48, 64, 80), (128, 256, 64), (7, 128, 33), (300, 512, 208)])
def test_scaled_mm_equals_the_emulation_bit_for_bit_on_cpu(shape, grans, out_dtype):
    """One thread: two CPU GEMMs are bitwise equal only with the same reduction order, and the BLAS
    may pick its number of threads by the machine's load (seen failing by one ulp under load)."""
    a, b = operands(*shape, *grans)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(scaled_mm_call(a, b, out_dtype), emulated_mm(a, b, out_dtype))
    finally:
        torch.set_num_threads(threads)


def meta_operand(rows: int, k: int, gran: str) -> Operand:
    q = torch.empty(rows, k, device="meta", dtype=F8)
    shape = {"tensor": (), "row": (rows, 1), "tile": (rows, -(-k // 128)),
             "block": (-(-rows // 128), -(-k // 128))}[gran]
    return Operand(q, torch.empty(shape, device="meta"), gran)


def test_cuda_layout_rules_reject_what_they_should():
    """On `meta` tensors torch applies CUDA's rules: second operand column-major, K and both of its
    dims multiples of 16 (the CPU kernel is lenient about all of these)."""
    one = torch.empty((), device="meta")
    a = torch.empty(64, 128, device="meta", dtype=F8)
    with pytest.raises(RuntimeError, match="col_major"):
        torch._scaled_mm(a, torch.empty(128, 32, device="meta", dtype=F8), one, one, out_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="divisible by 16"):
        torch._scaled_mm(torch.empty(64, 120, device="meta", dtype=F8),
                         torch.empty(32, 120, device="meta", dtype=F8).t(), one, one, out_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="divisible by 16"):
        torch._scaled_mm(a, torch.empty(30, 128, device="meta", dtype=F8).t(), one, one, out_dtype=torch.bfloat16)


@pytest.mark.parametrize("grans", [("tensor", "tensor"), ("row", "row"), ("row", "tensor"), ("tile", "block"),
                                   ("tile", "tile"), ("block", "tile")])
def test_dswb_layouts_pass_cudas_rules_after_padding(grans):
    """Odd shapes padded to `ScaledMmGemm.multiples` and passed as dswb passes them are accepted."""
    if grans[0] in ("tile", "block") and not hasattr(torch.nn.functional, "scaled_mm"):
        pytest.skip(f"torch {torch.__version__} has no torch.nn.functional.scaled_mm (blockwise)")
    gemm = ScaledMmGemm({gemm_kind(*grans): torch.bfloat16})
    ra, rk, rb = gemm.multiples(*grans)
    m, k, n = 37, 200, 72
    up = lambda v, mult: -(-v // mult) * mult  # noqa: E731
    a = meta_operand(up(m, ra), up(k, rk), grans[0])
    b = meta_operand(up(n, rb), up(k, rk), grans[1])
    out = scaled_mm_call(a, b, torch.bfloat16)
    assert out.shape == (a.q.shape[0], b.q.shape[0])


@pytest.mark.parametrize("grans", [("tile", "block"), ("tile", "tile"), ("block", "tile"), ("row", "tile"),
                                   ("tensor", "block")])
def test_emulation_agrees_with_deepseeks_promotion_per_128_of_k(grans):
    a, b = operands(100, 300, 70, *grans, seed=5)
    promoted, emulated = promoted_mm(a, b), emulated_mm(a, b, torch.float32)
    assert float((promoted - emulated).abs().max() / emulated.abs().max()) < 1e-5


def test_probe_on_cpu_finds_tensor_and_row_but_no_blockwise():
    kinds, why = probe_scaled_mm("cpu")
    assert kinds["tensor"] == torch.float32 and kinds["row"] == torch.float32
    assert not any(kinds.get(kind) for kind in ("tilexblock", "tilextile", "blockxtile"))
    assert "blockwise" in why


def test_auto_on_cpu_emulates_every_gemm_and_says_so():
    gemms, line = resolve_gemms("auto", Fp8Recipe(), torch.device("cpu"))
    assert all(isinstance(g, EmulatedGemm) for g in (gemms.forward, gemms.dgrad, gemms.wgrad))
    assert line.startswith("FP8 GEMMs: emulated") and "auto" in line


def test_explicit_scaled_mm_runs_rowwise_and_refuses_blockwise_on_cpu():
    gemms, line = resolve_gemms("scaled_mm", Fp8Recipe("row", "row", "row"), torch.device("cpu"))
    assert all(isinstance(g, ScaledMmGemm) for g in (gemms.forward, gemms.dgrad, gemms.wgrad))
    assert "scaled_mm (row)" in line
    with pytest.raises(UserError, match=r"fp8.backend = 'scaled_mm': the forward GEMM \(tile x block scaling\) "
                                        r"cannot run on cpu"):
        resolve_gemms("scaled_mm", Fp8Recipe(), torch.device("cpu"))
    with pytest.raises(UserError, match="no kernel for this pair"):
        resolve_gemms("scaled_mm", Fp8Recipe("row", "tile", "row"), torch.device("cpu"))
