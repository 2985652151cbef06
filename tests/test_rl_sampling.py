"""Next-token sampling (`dswb.engine.rl.sampling`): top-p nucleus, inverse-CDF draws, log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from dswb.engine.rl.sampling import inverse_cdf, sample_next, scaled_log_softmax, top_p_mask

PROBS = [0.5, 0.3, 0.15, 0.05]


def _logits(probs, rows: int = 1) -> torch.Tensor:
    return torch.log(torch.tensor(probs)).repeat(rows, 1)


@pytest.mark.parametrize("p, keep", [(0.1, [1, 0, 0, 0]), (0.5, [1, 0, 0, 0]), (0.51, [1, 1, 0, 0]),
                                     (0.8, [1, 1, 0, 0]), (0.81, [1, 1, 1, 0]), (0.99, [1, 1, 1, 1]),
                                     (1.0, [1, 1, 1, 1])])
def test_top_p_mask_is_the_smallest_prefix_reaching_p(p, keep):
    assert top_p_mask(torch.tensor([PROBS]), p).int().tolist() == [keep]


def test_top_p_mask_keeps_the_original_token_order():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3], [0.05, 0.15, 0.3, 0.5]])
    assert top_p_mask(probs, 0.8).int().tolist() == [[0, 1, 0, 1], [0, 0, 1, 1]]


def test_top_p_mask_ties_at_the_boundary_keep_the_lower_id():
    assert top_p_mask(torch.tensor([[0.25, 0.25, 0.25, 0.25]]), 0.3).int().tolist() == [[1, 1, 0, 0]]


def test_inverse_cdf_picks_by_cumulative_weight_and_never_a_zero_weight():
    w = torch.tensor([[0.0, 0.2, 0.0, 0.3, 0.5, 0.0]]).repeat(6, 1)
    u = torch.tensor([0.0, 0.19, 0.21, 0.49, 0.51, 1.0 - 2.0**-24])  # cdf 0 .2 .2 .5 1 1
    assert inverse_cdf(w, u).tolist() == [1, 1, 3, 3, 4, 4]
    one_hot = torch.zeros(3, 5)
    one_hot[:, 2] = 1.0
    assert inverse_cdf(one_hot, torch.tensor([0.0, 0.5, 1.0 - 2.0**-24])).tolist() == [2, 2, 2]


def test_inverse_cdf_never_selects_zero_weight_under_random_draws():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(2000, 50, generator=g)
    w[w < 0.7] = 0.0
    w[:, 7] += 1e-30  # a row never lacks a positive weight
    idx = inverse_cdf(w, torch.rand(2000, generator=g))
    assert bool((w.gather(1, idx[:, None]) > 0).all())


def test_sample_frequencies_match_the_softmax_probabilities():
    n = 40_000
    g = torch.Generator().manual_seed(1234)
    tokens, logprobs = sample_next(_logits(PROBS, n), 1.0, 1.0, g)
    freq = torch.bincount(tokens, minlength=4).double() / n
    # the std of a frequency is <= sqrt(0.25 / 40000) = 0.0025; 0.01 is four of them
    assert torch.allclose(freq, torch.tensor(PROBS, dtype=torch.double), atol=0.01)
    assert torch.allclose(logprobs, torch.log(torch.tensor(PROBS))[tokens], atol=1e-6)


def test_temperature_flattens_the_distribution_and_scores_under_it():
    n, temperature = 40_000, 2.0
    tokens, logprobs = sample_next(_logits(PROBS, n), temperature, 1.0, torch.Generator().manual_seed(7))
    expected = torch.tensor(PROBS).sqrt()
    expected = expected / expected.sum()
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert torch.allclose(freq, expected, atol=0.01)
    assert torch.allclose(logprobs, expected.log()[tokens], atol=1e-6)


def test_top_p_samples_only_the_nucleus_renormalised_but_scores_before_truncation():
    n = 40_000
    tokens, logprobs = sample_next(_logits(PROBS, n), 1.0, 0.8, torch.Generator().manual_seed(3))
    freq = torch.bincount(tokens, minlength=4).float() / n
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.01)
    assert freq[2:].sum() == 0
    assert torch.allclose(logprobs, torch.log(torch.tensor(PROBS))[tokens], atol=1e-6)


def test_top_p_never_samples_outside_the_nucleus_for_random_logits():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3000, 40, generator=g) * 3
    for p in (0.3, 0.7, 0.95):
        tokens, _ = sample_next(logits, 0.9, p, g)
        nucleus = top_p_mask(torch.softmax(logits / 0.9, -1), p)
        assert bool(nucleus.gather(1, tokens[:, None]).all())


def test_greedy_is_argmax_scored_at_temperature_one():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    tokens, logprobs = sample_next(logits, 0.0, 0.5, None)
    assert tokens.tolist() == [1, 0]
    assert torch.allclose(logprobs, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_same_generator_state_same_tokens_and_explicit_uniforms_decide():
    logits = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    a, _ = sample_next(logits, 1.0, 0.9, torch.Generator().manual_seed(11))
    b, _ = sample_next(logits, 1.0, 0.9, torch.Generator().manual_seed(11))
    c, _ = sample_next(logits, 1.0, 0.9, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    u = torch.rand(500, generator=torch.Generator().manual_seed(11))
    d, _ = sample_next(logits, 1.0, 0.9, None, u=u)
    assert torch.equal(a, d)


def test_scaled_log_softmax_counts_greedy_as_temperature_one():
    logits = torch.tensor([[1.0, 2.0, 4.0]])
    assert torch.allclose(scaled_log_softmax(logits, 0.0), torch.log_softmax(logits, -1))
    assert torch.allclose(scaled_log_softmax(logits, 0.5).exp().sum(), torch.tensor(1.0))
    assert math.isclose(scaled_log_softmax(logits, 0.5)[0, 2].item(), torch.log_softmax(logits * 2, -1)[0, 2].item(),
                        rel_tol=1e-6)
