"""rDPO (`dpo.loss = "robust"`, Chowdhury et al. 2024) against hand values and TRL 1.x's formula,
and cDPO (the sigmoid loss with `label_smoothing`) kept as it was: the two differ, and agree with
plain DPO at eps = 0."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from dswb.engine.preference.losses import dpo_loss

t = torch.tensor
ARGS = (t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]))   # h = 2


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def trl_robust(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    """TRL 1.16's `robust` branch of `DPOTrainer._compute_loss`, written out."""
    clean_loss_term = -(1 - eps) * F.logsigmoid(beta * h)
    flipped_loss_term = -eps * F.logsigmoid(-beta * h)
    return (clean_loss_term - flipped_loss_term) / (1 - 2 * eps)


def test_robust_by_hand():
    got = dpo_loss(*ARGS, beta=0.1, loss_type="robust", label_smoothing=0.1)["losses"].item()
    # -log sigmoid(0.2) = softplus(-0.2); -log sigmoid(-0.2) = softplus(0.2)
    assert got == pytest.approx((0.9 * softplus(-0.2) - 0.1 * softplus(0.2)) / 0.8, rel=1e-6)
    assert got == pytest.approx(0.5731388693815918, rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.2, 0.45])
def test_robust_equals_trls_formula(eps):
    g = torch.Generator().manual_seed(0)
    logps = [torch.randn(16, generator=g) * 3 for _ in range(4)]
    h = (logps[0] - logps[1]) - (logps[2] - logps[3])
    got = dpo_loss(*logps, beta=0.3, loss_type="robust", label_smoothing=eps)["losses"]
    torch.testing.assert_close(got, trl_robust(h, 0.3, eps), rtol=1e-6, atol=1e-6)


def test_robust_and_conservative_equal_plain_dpo_at_eps_zero():
    g = torch.Generator().manual_seed(1)
    logps = [torch.randn(16, generator=g) for _ in range(4)]
    plain = dpo_loss(*logps, beta=0.1)["losses"]
    torch.testing.assert_close(dpo_loss(*logps, beta=0.1, loss_type="robust")["losses"], plain)
    torch.testing.assert_close(dpo_loss(*logps, beta=0.1, label_smoothing=0.0)["losses"], plain)


def test_robust_is_unbiased_under_flipped_labels():
    """Its expectation over a label flipped with probability eps is the clean DPO loss."""
    eps, beta = 0.2, 0.5
    h = t([-3.0, -0.5, 0.0, 0.7, 4.0])

    def robust(x):
        return dpo_loss(x, torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x), beta=beta,
                        loss_type="robust", label_smoothing=eps)["losses"]

    expected = (1 - eps) * robust(h) + eps * robust(-h)
    torch.testing.assert_close(expected, -F.logsigmoid(beta * h), rtol=1e-5, atol=1e-6)


def test_conservative_dpo_is_kept_and_differs_from_robust():
    """cDPO: cross-entropy against smoothed labels, minimal at beta h = log((1 - eps) / eps); rDPO has no minimum."""
    eps, beta = 0.1, 1.0
    cdpo = dpo_loss(*ARGS, beta=0.1, label_smoothing=eps)["losses"].item()
    assert cdpo == pytest.approx(0.9 * softplus(-0.2) + 0.1 * softplus(0.2), rel=1e-6)
    h = torch.linspace(0, 6, 601)
    zeros = torch.zeros_like(h)
    smooth = dpo_loss(h, zeros, zeros, zeros, beta=beta, label_smoothing=eps)["losses"]
    assert float(h[smooth.argmin()]) == pytest.approx(math.log((1 - eps) / eps), abs=0.01)
    robust = dpo_loss(h, zeros, zeros, zeros, beta=beta, loss_type="robust", label_smoothing=eps)["losses"]
    assert bool((robust[1:] < robust[:-1]).all())                # keeps decreasing with the margin


def test_robust_needs_eps_below_one_half():
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*ARGS, beta=0.1, loss_type="robust", label_smoothing=0.5)


def test_the_config_takes_robust_with_a_flip_rate():
    cfg = tiny_config('run.stages=["dpo"]', "dpo.loss=robust", "dpo.label_smoothing=0.1")
    assert cfg.dpo.loss == "robust" and cfg.dpo.label_smoothing == 0.1
