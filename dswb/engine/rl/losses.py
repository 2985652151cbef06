"""Policy-gradient losses and their diagnostics, as pure tensor functions.

Per-token tensors are `[B, T]` with a `mask` of completion tokens. Log-probs are of the tokens
that were sampled, under the current policy (`logp`, with gradient), the policy that sampled
them (`old_logp`) and the frozen reference (`ref_logp`). The ratio always compares the SAME
tokens under the old and the current policy (the PPO of the blog's sketch compared different
responses).

Loss aggregation is written as per-token weights (`loss_weights`) so that a minibatch split into
micro-batches for gradient accumulation gives exactly the loss of the whole minibatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dswb.engine.rl.advantages import masked_mean


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Estimate of KL(policy || reference) per sampled token (Schulman's k1 / k3).

    With logr = ref_logp - logp: k1 = -logr (unbiased, can be negative per token and, when the
    samples are not from the policy, on average); k3 = exp(logr) - 1 - logr (>= 0, unbiased).
    """
    logr = ref_logp - logp
    if estimator == "k1":
        return -logr
    if estimator == "k3":
        return torch.exp(logr) - 1 - logr
    raise ValueError(f"unknown KL estimator {estimator!r}")


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        eps_low: float, eps_high: float | None = None) -> dict[str, torch.Tensor]:
    """PPO's clipped surrogate per token: max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high)).

    `advantages` is `[B, T]` or `[B]` (broadcast over tokens). Returns `loss` `[B, T]`, `ratio`,
    and the masks of tokens whose ratio was clipped from below (`clipped_low`: ratio < 1 - eps_low
    with A < 0) and from above (`clipped_high`: ratio > 1 + eps_high with A > 0), as TRL counts them.
    """
    eps_high = eps_low if eps_high is None else eps_high
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    return {
        "loss": torch.maximum(unclipped, clipped),
        "ratio": ratio,
        "clipped_low": (ratio < 1 - eps_low) & (advantages < 0),
        "clipped_high": (ratio > 1 + eps_high) & (advantages > 0),
    }


def loss_weights(mask: torch.Tensor, loss_type: str, total_seqs: int, total_tokens: int,
                 max_len: int) -> torch.Tensor:
    """Per-token weights w with loss = sum(w * per_token_loss), normalised over a whole minibatch.

    - grpo: mean over each sequence's tokens, then over sequences: w = 1 / (len_i * total_seqs)
    - dapo, bnpo: mean over every token of the minibatch: w = 1 / total_tokens
    - dr_grpo: constant normaliser: w = 1 / (total_seqs * max_len)
    - token_mean (PPO): as dapo.
    `total_seqs` counts every generated row of the minibatch, masked ones included (as TRL, where a
    masked row has a zero mask); `total_tokens` the tokens in the loss. Both cover the whole
    minibatch, so micro-batches add up to it exactly.
    """
    m = mask.to(torch.float32)
    if loss_type == "grpo":
        return m / (m.sum(dim=1, keepdim=True).clamp(min=1) * max(1, total_seqs))
    if loss_type in ("dapo", "bnpo", "token_mean"):
        return m / max(1, total_tokens)
    if loss_type == "dr_grpo":
        return m / (max(1, total_seqs) * max(1, max_len))
    raise ValueError(f"unknown loss type {loss_type!r}")


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       cliprange_value: float) -> dict[str, torch.Tensor]:
    """Per-token 0.5 * max((V - R)^2, (clip(V, V_old +- c) - R)^2) and where the clip was active."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    return {"loss": 0.5 * torch.maximum(loss_unclipped, loss_clipped), "clipped": loss_clipped > loss_unclipped}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last dimension, per position."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def approx_kl_per_token(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """0.5 * (logp - old_logp)^2 per token: the terms of TRL's approxkl."""
    return 0.5 * (logp - old_logp) ** 2


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0.5 * mean((logp - old_logp)^2) over the masked tokens (TRL's approxkl)."""
    return masked_mean(approx_kl_per_token(logp, old_logp), mask)


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """PPO's token rewards: -kl_coef * KL on every token, plus the sequence score on its last token."""
    m = mask.to(kl.dtype)
    rewards = -kl_coef * kl * m
    last = (m.sum(dim=1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    has_tokens = m.sum(dim=1) > 0
    rewards[rows[has_tokens], last[has_tokens]] += scores.to(rewards.dtype)[has_tokens]
    return rewards
