"""Pure formulas: learning-rate schedule, token-weighted loss."""

from __future__ import annotations

import math

import pytest
import torch

from dswb.engine.train.losses import count_targets, token_loss_sum
from dswb.engine.train.schedule import lr_at


def test_warmup_then_cosine_to_floor():
    lrs = [lr_at(s, 1.0, 100, 10, "cosine", 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, 1.0, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_at(55, 1.0, 100, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_at(80, 2.0, 100, 10, "constant", 0.0) == 2.0


def test_token_loss_sum_matches_mean_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 1, 2]])
    total = token_loss_sum(logits, labels)
    n = count_targets(labels)
    assert n == 2 + 4
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert math.isclose(float(total) / n, float(ref), rel_tol=1e-6)
