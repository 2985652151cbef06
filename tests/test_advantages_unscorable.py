"""Unscorable completions (NaN reward) in the critic-free advantages: left out of their group's mean
and std and given advantage 0, as TRL >= 1.6 does, under every estimator and scaling; groups without
signal get exactly 0. The reference below restates TRL 1.16's formulas (`nanstd`, the GRPO and
RLOO advantages) so the tests need no TRL."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from dswb.engine.rl import global_batch
from dswb.engine.rl.advantages import group_advantages, nan_std, zero_std_groups

NAN = float("nan")
t = torch.tensor


def trl_nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(variance, NAN))
    std = torch.sqrt(variance * correction)
    return std.squeeze() if dim is None else std.squeeze(dim)


def trl_grpo(rewards: torch.Tensor, G: int, scale: str) -> torch.Tensor:
    """TRL's GRPOTrainer, sum_then_normalize: rewards already NaN where unscorable."""
    mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G)
    if scale == "batch":
        std = trl_nanstd(rewards).expand_as(rewards)
    else:
        std = trl_nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def trl_rloo(rewards: torch.Tensor, G: int) -> torch.Tensor:
    """TRL's RLOOTrainer without `normalize_advantages`."""
    groups = rewards.view(-1, G)
    counts = (~torch.isnan(groups)).sum(dim=1, keepdim=True)
    baselines = ((torch.nansum(groups, dim=1, keepdim=True) - groups) / (counts - 1)).view(-1)
    return torch.nan_to_num(rewards - baselines, nan=0.0)


def random_rewards(seed: int, groups: int = 6, G: int = 4) -> torch.Tensor:
    """Continuous rewards (no ties) with unscorable rows: the first group all unscorable, the second with
    a single scorable row."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(groups * G, generator=g)
    r[torch.rand(groups * G, generator=g) < 0.25] = NAN
    r[:G] = NAN
    r[G:2 * G] = t([0.3, NAN, NAN, NAN])
    return r


def test_the_brief_example_gives_trls_advantages():
    r = t([1.0, NAN, 0.0, 1.0])
    std = math.sqrt(1 / 3)
    want = [(1 / 3) / (std + 1e-4), 0.0, (-2 / 3) / (std + 1e-4), (1 / 3) / (std + 1e-4)]
    got = group_advantages(r, 4)
    torch.testing.assert_close(got, t(want), rtol=0, atol=1e-6)
    assert got[1].item() == 0.0
    assert [round(v, 3) for v in got.tolist()] == [0.577, 0.0, -1.155, 0.577]   # not the old [0.866, -0.866, ...]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_equals_trl_with_unscorable_rows(scale, seed):
    r = random_rewards(seed)
    torch.testing.assert_close(group_advantages(r, 4, "grpo", scale), trl_grpo(r, 4, scale), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rloo_leaves_one_out_over_the_scorable_others(seed):
    r = random_rewards(seed)
    torch.testing.assert_close(group_advantages(r, 4, "rloo"), trl_rloo(r, 4), rtol=1e-6, atol=1e-6)
    # by hand: the others of row 0 are {0, 1} (row 1 unscorable)
    assert group_advantages(t([1.0, NAN, 0.0, 1.0]), 4, "rloo").tolist() == [0.5, 0.0, -1.0, 0.5]


def test_reinforce_pp_by_hand_with_unscorable_rows():
    # group 1: centred [1/3, -, -2/3, 1/3]; group 2 has no signal (0); Bessel std over the 7 scorable rows = 1/3
    r = t([1.0, NAN, 0.0, 1.0, 0.1, 0.1, 0.1, 0.1])
    got = group_advantages(r, 4, "reinforce_pp")
    torch.testing.assert_close(got, t([1.0, 0.0, -2.0, 1.0, 0.0, 0.0, 0.0, 0.0]), rtol=0, atol=1e-5)
    assert got[4:].tolist() == [0.0] * 4 and got[1].item() == 0.0


def test_reinforce_pp_zero_variance_groups_are_exactly_zero():
    """The batch whitening used to shift them to ~1e-8, and the zero-advantage skip then trained them."""
    r = t([1.0, 0.0, 0.0, 0.0, 0.7, 0.7, 0.7, 0.7, 2.0, 2.0, 1.0, 2.0])
    got = group_advantages(r, 4, "reinforce_pp")
    assert got[4:8].tolist() == [0.0] * 4
    centred = t([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0, 0.25, 0.25, -0.75, 0.25])
    torch.testing.assert_close(got, centred / (centred.std() + 1e-8), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
@pytest.mark.parametrize("value", [0.1, 0.7, 1 / 3, 123.456])
def test_equal_rewards_give_exactly_zero_even_when_their_mean_rounds(estimator, value):
    r = torch.full((16,), value)    # float32 mean of 8 copies of 0.1 is not 0.1
    r[8:] = t([0.0, 1.0] * 4)
    got = group_advantages(r, 8, estimator)
    assert got[:8].tolist() == [0.0] * 8 and got[8:].abs().min() > 0


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_groups_with_fewer_than_two_scorable_rows_have_no_signal(estimator):
    r = t([NAN, NAN, NAN, NAN, 5.0, NAN, NAN, NAN, 1.0, NAN, 2.0, NAN])
    got = group_advantages(r, 4, estimator)
    assert torch.isfinite(got).all() and got[:8].tolist() == [0.0] * 8 and got[8] < 0 < got[10]
    assert zero_std_groups(r, 4).tolist() == [True, True, False]


def test_zero_std_groups_is_nan_aware():
    assert zero_std_groups(t([1.0, NAN, 1.0, NAN, 1.0, NAN, 2.0, NAN]), 4).tolist() == [True, False]
    assert zero_std_groups(t([0.5, 0.5, 0.5, 0.5 + 1e-6]), 4).tolist() == [False]
    assert zero_std_groups(t([0.5, 0.5, 0.5, 0.5 + 1e-6]), 4, rtol=1e-5).tolist() == [True]


def test_nan_std_is_trls_nanstd():
    x = t([[1.0, NAN, 3.0], [NAN, NAN, 2.0], [0.5, 1.5, 4.0]])
    torch.testing.assert_close(nan_std(x, dim=1), trl_nanstd(x, dim=1), equal_nan=True)
    assert nan_std(x, dim=1, keepdim=True).shape == (3, 1)
    assert nan_std(x).item() == pytest.approx(trl_nanstd(x).item())
    assert math.isnan(nan_std(t([NAN, 2.0])).item())


class TwoRanks:
    """A stand-in world: this process is rank `rank` of 2; the other rank's rewards are `other`."""

    def __init__(self, rank: int, mine: torch.Tensor, other: torch.Tensor) -> None:
        self.rank, self.size = rank, 2
        self.parts = [mine, other] if rank == 0 else [other, mine]

    def all_gather(self, obj):
        assert isinstance(obj, torch.Tensor) and obj.device.type == "cpu"
        return [pickle.loads(pickle.dumps(p)) for p in self.parts]   # what all_gather_object does


@pytest.mark.parametrize("estimator,scale", [("grpo", "group"), ("grpo", "batch"), ("rloo", "group"),
                                             ("reinforce_pp", "group")])
def test_global_advantages_gather_nan_rewards_like_one_process(monkeypatch, estimator, scale):
    everything = random_rewards(3, groups=6)
    one = group_advantages(everything, 4, estimator, scale)
    halves = everything[:12], everything[12:]
    for rank in (0, 1):
        monkeypatch.setattr(global_batch, "active", lambda rank=rank: TwoRanks(rank, halves[rank], halves[1 - rank]))
        got = global_batch.global_advantages(halves[rank], lambda every: group_advantages(every, 4, estimator, scale))
        assert torch.equal(got, one[12 * rank:12 * rank + 12])
