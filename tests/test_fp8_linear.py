"""The FP8 linear layer: outputs and the three gradients against an FP32 reference within a stated
relative error, dtypes (BF16 autocast output, FP32 master-weight gradient), shared parameters,
odd dimensions, the scaled_mm backend equal to the emulation, amax histories and delayed scaling."""

from __future__ import annotations

import pytest
import torch

from dswb.engine.fp8.backends import Gemms, resolve_gemms
from dswb.engine.fp8.gemm import EmulatedGemm
from dswb.engine.fp8.linear import Fp8Linear
from dswb.engine.fp8.recipe import Fp8Recipe
from dswb.engine.fp8.stats import Fp8Stats

CPU = torch.device("cpu")
# E4M3 keeps 3 mantissa bits: ~3.6% relative error per product of two quantized operands on random
# data. Stated bound for the output and each gradient: 5% (E5M2 gradients, 2 bits: 8%).
BOUND, BOUND_E5M2 = 0.05, 0.08
RECIPES = {
    "deepseek": Fp8Recipe(),
    "tensor": Fp8Recipe("tensor", "tensor", "tensor"),
    "row": Fp8Recipe("row", "row", "row"),
    "block-activations": Fp8Recipe("block", "tile", "block"),
    "pow2": Fp8Recipe(power_of_two=True),
    "e5m2": Fp8Recipe(e5m2_gradients=True),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def reference(lin: torch.nn.Linear, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    lin.zero_grad(set_to_none=True)
    y = lin(x)
    y.backward(grad)
    return y.detach(), x.grad, lin.weight.grad.clone(), lin.bias.grad.clone()


def fp8_pass(layer: torch.nn.Module, lin: torch.nn.Linear, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    lin.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(grad)
    return y.detach(), x.grad, lin.weight.grad.clone(), lin.bias.grad.clone()


@pytest.mark.parametrize("name", list(RECIPES))
def test_output_and_gradients_match_fp32_within_the_stated_bound(name):
    torch.manual_seed(0)
    lin = torch.nn.Linear(320, 200)
    x = torch.randn(3, 50, 320)
    grad = torch.randn(3, 50, 200)
    recipe = RECIPES[name]
    gemms, _ = resolve_gemms("emulated", recipe, CPU)
    got = fp8_pass(Fp8Linear.from_linear(lin, recipe, gemms), lin, x, grad)
    want = reference(lin, x, grad)
    bound = BOUND_E5M2 if recipe.e5m2_gradients else BOUND
    for label, g, w in zip(("y", "dx", "dW"), got, want):
        assert rel(g, w) < bound, (name, label, rel(g, w))
        assert rel(g, w) > 1e-3, (name, label)   # it is really FP8, not a plain linear
    assert torch.allclose(got[3], want[3], rtol=1e-5, atol=1e-6)   # the bias gradient stays exact


@pytest.mark.parametrize("name", ["tensor", "row"])
def test_scaled_mm_backend_gives_the_emulations_numbers(name):
    torch.manual_seed(1)
    lin = torch.nn.Linear(256, 128)
    x, grad = torch.randn(64, 256), torch.randn(64, 128)
    results = []
    for backend in ("emulated", "scaled_mm"):
        gemms, _ = resolve_gemms(backend, RECIPES[name], CPU)
        results.append(fp8_pass(Fp8Linear.from_linear(lin, RECIPES[name], gemms), lin, x, grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_dimensions_not_multiples_of_16_or_128_work_on_every_backend():
    torch.manual_seed(2)
    lin = torch.nn.Linear(200, 72)
    x, grad = torch.randn(37, 200), torch.randn(37, 72)
    want = reference(lin, x, grad)
    for backend, recipe in (("emulated", Fp8Recipe()), ("scaled_mm", RECIPES["row"]), ("scaled_mm", RECIPES["tensor"])):
        gemms, _ = resolve_gemms(backend, recipe, CPU)
        got = fp8_pass(Fp8Linear.from_linear(lin, recipe, gemms), lin, x, grad)
        assert [t.shape for t in got] == [t.shape for t in want]
        assert all(rel(g, w) < BOUND for g, w in zip(got, want))


def test_autocast_gives_bf16_output_and_fp32_master_gradients():
    torch.manual_seed(3)
    lin = torch.nn.Linear(128, 128, bias=False)
    gemms, _ = resolve_gemms("emulated", Fp8Recipe(), CPU)
    layer = Fp8Linear.from_linear(lin, Fp8Recipe(), gemms)
    x = torch.randn(16, 128, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    with torch.no_grad():   # the GEMM itself is not autocast: FP32, rounded to BF16 once at the end
        assert torch.equal(y.detach(), layer(x).to(torch.bfloat16))
    y.float().sum().backward()
    assert lin.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert layer.weight is lin.weight and lin.weight.dtype == torch.float32


def test_state_dict_keeps_linear_names_and_adds_the_amax_history():
    lin = torch.nn.Linear(128, 64)
    gemms, _ = resolve_gemms("emulated", Fp8Recipe(history_len=4), CPU)
    layer = Fp8Linear.from_linear(lin, Fp8Recipe(history_len=4), gemms)
    assert set(layer.state_dict()) == {"weight", "bias", "fp8_amax_history"}
    assert layer.fp8_amax_history.shape == (3, 4)
    assert torch.equal(layer.to_linear()(torch.ones(2, 128)), lin(torch.ones(2, 128)))
    layer.fp8_enabled = False
    assert torch.equal(layer(torch.ones(2, 128)), lin(torch.ones(2, 128)))


def test_histories_and_statistics_update_in_training_passes_only():
    lin = torch.nn.Linear(128, 64)
    recipe = Fp8Recipe(history_len=3)
    gemms, _ = resolve_gemms("emulated", recipe, CPU)
    layer = Fp8Linear.from_linear(lin, recipe, gemms, name="mlp.up_proj", group="mlp.up")
    layer.recorder = Fp8Stats(active=True)
    with torch.no_grad():
        layer(torch.randn(8, 128))
    assert layer.fp8_amax_history.abs().sum() == 0 and not layer.recorder.data
    x = torch.full((8, 128), 2.0, requires_grad=True)
    layer(x).sum().backward()
    hist = layer.fp8_amax_history
    assert hist[0, 0] == 2.0 and hist[1, 0] == lin.weight.abs().max() and hist[2, 0] == 1.0
    assert set(layer.recorder.data) == {("mlp.up", "input"), ("mlp.up", "weight"), ("mlp.up", "grad")}
    layer(torch.full((8, 128), 3.0, requires_grad=True)).sum().backward()
    assert hist[0, :2].tolist() == [3.0, 2.0]   # newest first


def test_delayed_scaling_uses_the_history_and_saturates_explicitly():
    torch.manual_seed(4)
    lin = torch.nn.Linear(128, 128, bias=False)
    recipe = Fp8Recipe("tensor", "tensor", "tensor", scaling="delayed", history_len=2)
    gemms, _ = resolve_gemms("emulated", recipe, CPU)
    layer = Fp8Linear.from_linear(lin, recipe, gemms, group="g")
    layer.recorder = Fp8Stats(active=True)
    x = torch.randn(32, 128)
    layer(x.requires_grad_(True)).sum().backward()          # first step: current amax, no saturation
    assert layer.recorder.data[("g", "input")]["saturated"] == 0
    layer.recorder.data.clear()
    big = (x.detach() * 10).requires_grad_(True)            # amax 10x the history's: clipped, never inf/NaN
    y = layer(big)
    assert torch.isfinite(y).all()
    assert layer.recorder.data[("g", "input")]["saturated"] > 0
    assert float(y.detach().abs().max()) < float((big.detach() @ lin.weight.detach().t()).abs().max())


class PaddedEmulation(EmulatedGemm):
    """The emulation with scaled_mm-like padding demands, to mix backends as `auto` can on a GPU."""

    def __init__(self, multiples: tuple[int, int, int]) -> None:
        self._multiples = multiples

    def multiples(self, gran_a: str, gran_b: str) -> tuple[int, int, int]:
        return self._multiples


@pytest.mark.parametrize("recipe", [Fp8Recipe("block", "tile", "block"), Fp8Recipe("tensor", "tensor", "tensor"),
                                    Fp8Recipe()])
def test_one_gemms_padding_does_not_leak_into_another(recipe):
    """dgrad padded to 128 (as blockwise scaled_mm wants) while forward and wgrad need none: operands
    reused across GEMMs must still meet with the same padded K."""
    torch.manual_seed(5)
    lin = torch.nn.Linear(200, 72)
    x, grad = torch.randn(37, 200), torch.randn(37, 72)
    want = reference(lin, x, grad)
    for gemms in (Gemms(EmulatedGemm(), PaddedEmulation((128, 128, 128)), EmulatedGemm()),
                  Gemms(PaddedEmulation((16, 16, 16)), EmulatedGemm(), PaddedEmulation((128, 128, 16)))):
        got = fp8_pass(Fp8Linear.from_linear(lin, recipe, gemms), lin, x, grad)
        assert all(rel(g, w) < BOUND for g, w in zip(got, want))
