"""The RL and preference formulas against values computed by hand, edge cases included:
masked padding, one-token responses, zero-variance groups, all-equal rewards."""

from __future__ import annotations

import math

import pytest
import torch

from dswb.engine.preference.losses import dpo_loss, reward_model_loss, sequence_logprobs
from dswb.engine.rl.advantages import (explained_variance, gae, group_advantages, masked_mean, masked_whiten,
                                       zero_std_groups)
from dswb.engine.rl.losses import (approx_kl, clipped_policy_loss, clipped_value_loss, entropy_from_logits,
                                   kl_per_token, loss_weights, per_token_rewards)

t = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_gae_by_hand():
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), t([[1, 1, 1]]), gamma=1.0, lam=0.95)
    assert close(adv, [[0.46575, 0.385, 0.3]])
    assert close(ret, [[0.96575, 0.985, 1.0]])


def test_gae_ignores_padding_values_and_rewards():
    adv, ret = gae(t([[0.0, 1.0, 5.0]]), t([[0.5, 0.2, 9.0]]), t([[1, 1, 0]]), gamma=1.0, lam=0.95)
    assert close(adv, [[0.46, 0.8, 0.0]])
    assert close(ret, [[0.96, 1.0, 0.0]])


def test_gae_one_token_response_and_discount():
    adv, _ = gae(t([[2.0, 0.0]]), t([[0.5, 0.0]]), t([[1, 0]]), gamma=0.9, lam=0.5)
    assert close(adv, [[1.5, 0.0]])
    adv, _ = gae(t([[0.0, 1.0]]), t([[0.0, 0.0]]), t([[1, 1]]), gamma=0.9, lam=1.0)
    assert close(adv, [[0.9, 1.0]])  # lam = 1: discounted return minus value


def test_group_advantages_grpo_scalings():
    r = t([1.0, 0.0, 0.0, 1.0])
    std = math.sqrt(1 / 3)
    assert close(group_advantages(r, 4, "grpo", "group"), [0.5 / (std + 1e-4) * s for s in (1, -1, -1, 1)])
    assert close(group_advantages(r, 4, "grpo", "none"), [0.5, -0.5, -0.5, 0.5])
    both = t([1.0, 0.0, 2.0, 2.0])  # batch std = std of all four
    batch_std = float(both.std())
    assert close(group_advantages(both, 2, "grpo", "batch"), [0.5 / (batch_std + 1e-4), -0.5 / (batch_std + 1e-4), 0, 0])


def test_group_advantages_rloo_and_reinforce_pp():
    assert close(group_advantages(t([1.0, 0.0, 0.0, 1.0]), 4, "rloo"), [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    got = group_advantages(t([1.0, 0.0, 1.0, 1.0]), 2, "reinforce_pp")
    s = math.sqrt(0.5 / 3)
    assert close(got, [0.5 / s, -0.5 / s, 0.0, 0.0], tol=1e-4)


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp"])
def test_all_equal_rewards_give_zero_advantage(estimator):
    r = t([3.0, 3.0, 3.0, 0.0, 0.0, 0.0])
    adv = group_advantages(r, 3, estimator)
    assert torch.isfinite(adv).all() and close(adv, torch.zeros(6))
    assert zero_std_groups(r, 3).tolist() == [True, True]
    assert zero_std_groups(t([1.0, 0.0, 1.0, 1.0]), 2).tolist() == [False, True]
    with pytest.raises(ValueError):
        group_advantages(t([1.0, 2.0, 3.0]), 2)


def test_kl_estimators_by_hand():
    logp, ref = t([-1.0, -2.0]), t([-1.5, -2.0])
    assert close(kl_per_token(logp, ref, "k1"), [0.5, 0.0])
    assert close(kl_per_token(logp, ref, "k3"), [math.exp(-0.5) - 0.5, 0.0])
    # k1 is negative when the sampled token is likelier under the reference; k3 never is
    assert kl_per_token(t([-2.0]), t([-1.0]), "k1").item() < 0 < kl_per_token(t([-2.0]), t([-1.0]), "k3").item()


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(4)
    logp = torch.log(t([1.5, 1.5, 0.5, 0.5]))
    adv = t([1.0, -1.0, -1.0, 1.0])
    out = clipped_policy_loss(logp.unsqueeze(0), old.unsqueeze(0), adv.unsqueeze(0), eps_low=0.2, eps_high=0.2)
    assert close(out["loss"], [[-1.2, 1.5, 0.8, -0.5]])
    assert out["clipped_high"].tolist() == [[True, False, False, False]]
    assert out["clipped_low"].tolist() == [[False, False, True, False]]
    # DAPO's asymmetric clip: a wider upper bound lets 1.25 through
    out = clipped_policy_loss(torch.log(t([[1.25]])), t([[0.0]]), t([1.0]), eps_low=0.2, eps_high=0.28)
    assert close(out["loss"], [[-1.25]]) and not out["clipped_high"].any()


def test_ratio_is_one_and_gradient_is_minus_advantage_on_policy():
    logp = torch.log(t([[0.3, 0.6]])).requires_grad_()
    out = clipped_policy_loss(logp, logp.detach(), t([2.0]), 0.2)
    out["loss"].sum().backward()
    assert close(out["ratio"], [[1.0, 1.0]]) and close(logp.grad, [[-2.0, -2.0]])


def test_loss_weights_by_aggregation():
    mask = t([[1, 1, 0], [1, 0, 0]])
    assert close(loss_weights(mask, "grpo", 2, 3, 3), [[0.25, 0.25, 0], [0.5, 0, 0]])
    assert close(loss_weights(mask, "dapo", 2, 3, 3), [[1 / 3, 1 / 3, 0], [1 / 3, 0, 0]])
    assert close(loss_weights(mask, "dr_grpo", 2, 3, 3), [[1 / 6, 1 / 6, 0], [1 / 6, 0, 0]])
    # micro-batches of a minibatch add up to the whole: row by row with the minibatch totals
    whole = loss_weights(mask, "grpo", 2, 3, 3)
    parts = torch.cat([loss_weights(mask[:1], "grpo", 2, 3, 3), loss_weights(mask[1:], "grpo", 2, 3, 3)])
    assert close(whole, parts)
    assert loss_weights(t([[0, 0]]), "grpo", 1, 0, 2).sum() == 0  # an empty row weighs nothing


def test_value_loss_by_hand():
    out = clipped_value_loss(t([1.0, 0.6]), t([0.5, 0.5]), t([2.0, 0.6]), cliprange_value=0.2)
    assert close(out["loss"], [0.845, 0.0]) and out["clipped"].tolist() == [True, False]


def test_per_token_rewards_put_the_score_on_the_last_real_token():
    r = per_token_rewards(t([1.0, 2.0]), t([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]]), t([[1, 1, 0], [1, 0, 0]]), 0.5)
    assert close(r, [[-0.05, 0.9, 0.0], [1.75, 0.0, 0.0]])


def test_entropy_approx_kl_whiten_explained_variance():
    assert close(entropy_from_logits(torch.zeros(1, 4)), [math.log(4)])
    assert close(approx_kl(t([[0.0, 1.0]]), t([[0.0, 0.0]]), t([[1, 1]])), 0.25)
    assert close(masked_mean(t([[1.0, 3.0, 100.0]]), t([[1, 1, 0]])), 2.0)
    w = masked_whiten(t([[1.0, 3.0, 100.0]]), t([[1, 1, 0]]))
    assert close(w, [[-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]], tol=1e-4)
    ret = t([[1.0, 2.0, 3.0]])
    assert explained_variance(ret, ret, torch.ones(1, 3)) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 3), ret, torch.ones(1, 3)) == pytest.approx(0.0)
    assert math.isnan(explained_variance(ret, torch.ones(1, 3), torch.ones(1, 3)))


def test_reward_model_loss_by_hand():
    rc, rr = t([2.0]), t([0.0])
    assert reward_model_loss(rc, rr).item() == pytest.approx(math.log1p(math.exp(-2)), rel=1e-5)
    assert reward_model_loss(rc, rr, margin=t([1.0])).item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-5)
    assert reward_model_loss(rc, rr, center_coef=0.01).item() == pytest.approx(math.log1p(math.exp(-2)) + 0.04, rel=1e-5)


def test_dpo_losses_by_hand():
    args = (t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]))
    out = dpo_loss(*args, beta=0.1)
    assert out["losses"].item() == pytest.approx(math.log1p(math.exp(-0.2)), rel=1e-5)
    assert out["chosen_rewards"].item() == pytest.approx(0.1) and out["rejected_rewards"].item() == pytest.approx(-0.1)
    smooth = dpo_loss(*args, beta=0.1, label_smoothing=0.1)["losses"].item()
    assert smooth == pytest.approx(0.9 * math.log1p(math.exp(-0.2)) + 0.1 * math.log1p(math.exp(0.2)), rel=1e-5)
    assert dpo_loss(*args, beta=0.1, loss_type="ipo")["losses"].item() == pytest.approx(9.0)
    # equal policy and reference: h = 0, loss log 2 whatever beta
    assert dpo_loss(t([-1.0]), t([-2.0]), t([-1.0]), t([-2.0]), beta=3.0)["losses"].item() == pytest.approx(math.log(2))


def test_sequence_logprobs_sum_only_labelled_tokens():
    logits = torch.zeros(1, 3, 4)
    total, n = sequence_logprobs(logits, t([[-100, 1, 2]]))
    assert n.tolist() == [2] and total.item() == pytest.approx(-2 * math.log(4))
