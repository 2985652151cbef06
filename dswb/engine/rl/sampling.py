"""Next-token sampling for RL rollouts: temperature, top-p (nucleus) and the sampled token's log-prob.

Pure functions on a `[B, V]` logits tensor, used by the rollout sampler at every decoding step.

Sampling is by inverse CDF from one uniform number per row, `u` in [0, 1): the token is the first
whose cumulative weight exceeds `u * total`. Given the same logits and `u` it is exact and
deterministic, and the sampler can draw every row's uniforms up front, so a row's tokens do not
depend on how a rollout is split into chunks (`torch.multinomial` would consume one shared
generator in a different order for each chunking). Log-probs are those of the *sampling*
distribution before truncation: `log_softmax(logits / temperature)` (what PPO and GRPO need as
"old" log-probs; TRL computes them the same way). Temperature 0 is greedy: argmax, and the
log-prob of that token under the temperature-1 distribution.
"""

from __future__ import annotations

import torch


def scaled_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`log_softmax(logits / temperature)` in float32; temperature <= 0 (greedy) counts as 1."""
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)


def nucleus_keep_sorted(sorted_probs: torch.Tensor, p: float) -> torch.Tensor:
    """Which of the descending-sorted probabilities form the nucleus of mass `p`.

    A token is kept when the mass of the tokens before it is below `p`: the smallest prefix whose
    mass reaches `p`, so the most likely token is always kept.
    """
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    return mass_before < p


def top_p_mask(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean mask (same shape and order as `probs`, `[..., V]`) of the top-p nucleus.

    Ties at the nucleus boundary are broken by the sort (stable, so by token id).
    """
    if p >= 1.0:
        return torch.ones_like(probs, dtype=torch.bool)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    keep_sorted = nucleus_keep_sorted(sorted_probs, p)
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of non-negative `weights` `[B, V]` with uniforms `u` `[B]` in [0, 1).

    Never returns an index of zero weight: the target is kept strictly below the total, and an
    index is only reached by crossing a strictly larger cumulative weight.
    """
    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    target = torch.minimum(u.to(cdf.dtype).unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                generator: torch.Generator | None = None,
                u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of `logits` `[B, V]`; returns `(tokens [B] long, logprobs [B] float32)`.

    `u` (`[B]` uniforms in [0, 1)) is drawn from `generator` when not given. The log-prob is under
    `log_softmax(logits / temperature)`, before the top-p truncation; for temperature 0 (greedy,
    argmax) it is under the temperature-1 distribution.
    """
    logp = scaled_log_softmax(logits, temperature)
    if temperature <= 0:
        tokens = logp.argmax(-1)
    else:
        if u is None:
            u = torch.rand(logits.shape[0], generator=generator,
                           device=generator.device if generator is not None else "cpu").to(logits.device)
        probs = logp.exp()
        if top_p >= 1.0:
            tokens = inverse_cdf(probs, u)
        else:
            sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
            kept = sorted_probs * nucleus_keep_sorted(sorted_probs, top_p)
            tokens = order.gather(-1, inverse_cdf(kept, u).unsqueeze(-1)).squeeze(-1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
