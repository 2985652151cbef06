"""`fp8.backend = 'torchao'` (optional extra): torchao's float8 training converts the same layers
dswb's filter picks, trains (emulated on a CPU), reports itself in the log, and exports to a plain
model. Skipped without torchao (`pip install 'dswb[torchao]'`)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchao.float8", reason="torchao is an optional extra: pip install 'dswb[torchao]'")

from dswb.config import load_config  # noqa: E402
from dswb.engine.fp8 import apply_fp8, export_model, fp8_info  # noqa: E402
from dswb.engine.model.build import llama_config  # noqa: E402


@pytest.mark.parametrize("gran", ["tensor", "row"])
def test_torchao_converts_the_filtered_layers_and_trains(gran):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(llama_config("tiny", 64, 32, 1, 2, 0))
    names = set(base.state_dict())
    cfg = load_config(None, ["fp8.enabled=true", "fp8.backend=torchao", f"fp8.activations={gran}",
                             f"fp8.weights={gran}", f"fp8.gradients={gran}"])
    model = apply_fp8(base, cfg.fp8, torch.device("cpu"))
    info = fp8_info(model)
    assert len(info.converted) == 28 and dict(info.kept) == {"lm_head": "skip pattern 'lm_head'"}
    assert "torchao" in info.gemm_line and f"'{gran}wise'" in info.gemm_line and not info.stats_supported
    assert type(model.lm_head) is torch.nn.Linear
    ids = torch.randint(0, 64, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.layers[0].mlp.up_proj.weight.grad is not None
    plain = export_model(model)
    assert all(type(m).__module__.startswith("torch.") for m in plain.modules() if isinstance(m, torch.nn.Linear))
    assert set(plain.state_dict()) == names


@pytest.mark.parametrize("gran", ["tensor", "row"])
def test_dswb_and_torchao_compute_the_same_fp8_linear(gran):
    """Same recipe, two implementations: their outputs and gradients agree far inside FP8's own error
    (~3.7% here), so both quantize the same way (torchao's emulation vs dswb's `scaled_mm` path).
    torchao's `tensorwise` recipe keeps output gradients in E5M2, so dswb does too for that one."""
    torch.manual_seed(1)
    base = torch.nn.Sequential(torch.nn.Linear(256, 128, bias=False))
    x = torch.randn(64, 256)
    grad = torch.randn(64, 128)
    results = []
    for backend in ("scaled_mm", "torchao"):
        import copy

        model = copy.deepcopy(base)
        e5m2 = gran == "tensor" and backend == "scaled_mm"
        cfg = load_config(None, ["fp8.enabled=true", f"fp8.backend={backend}", f"fp8.activations={gran}",
                                 f"fp8.weights={gran}", f"fp8.gradients={gran}", "fp8.skip=[]",
                                 f"fp8.e5m2_gradients={'true' if e5m2 else 'false'}"])
        apply_fp8(model, cfg.fp8, torch.device("cpu"))
        xi = x.clone().requires_grad_(True)
        y = model(xi)
        y.backward(grad)
        results.append((y.detach(), xi.grad, model[0].weight.grad))
    exact = x @ base[0].weight.detach().t()
    assert float((results[0][0] - exact).norm() / exact.norm()) > 0.02          # both really are FP8
    for ours, theirs in zip(*results):
        assert float((ours - theirs).norm() / theirs.norm()) < 2e-3
