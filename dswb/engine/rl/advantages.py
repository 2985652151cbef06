"""Advantage estimators and masked statistics, as pure tensor functions.

Conventions: per-token tensors are `[B, T]` with a `mask` (1 = a completion token, 0 = padding
after the end); per-sequence tensors are `[B]`. Rows of a GRPO batch are grouped by prompt:
rows `g*G .. g*G+G-1` are the G completions of prompt g.

- `gae`: PPO's generalised advantage estimation (Schulman et al. 2016), TRL's recursion.
- `group_advantages`: one switch for the critic-free estimators: GRPO's group-normalised
  advantage (DeepSeekMath), RLOO's leave-one-out baseline (Ahmadian et al. 2024) and REINFORCE++
  with a group baseline and batch normalisation (OpenRLHF's `reinforce_baseline`).
"""

from __future__ import annotations

import torch

GRPO_STD_EPS = 1e-4   # TRL: A = (r - mean) / (std + 1e-4)
WHITEN_EPS = 1e-8


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the masked entries (0 when there are none)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked entries (Bessel-corrected when `unbiased` and n > 1)."""
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    var = masked_sum((x - mean) ** 2, mask) / n.clamp(min=1)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries; masked-out entries become 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both `[B, T]`, zero after each row's end.

    delta_t = r_t + gamma * V_{t+1} - V_t (V past the end is 0); A_t = delta_t + gamma*lam*A_{t+1};
    returns = A + V. Rewards and values at padding positions are ignored.
    """
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    T = rewards.shape[1]
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + values) * m


def group_view(values: torch.Tensor, group_size: int) -> torch.Tensor:
    if values.dim() != 1 or values.numel() % group_size:
        raise ValueError(f"{values.numel()} rewards do not split into groups of {group_size}")
    return values.view(-1, group_size)


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """`[num_groups]` bool: groups whose rewards are all equal (no learning signal)."""
    groups = group_view(rewards, group_size)
    return (groups.max(dim=1).values - groups.min(dim=1).values).abs() <= 1e-9 * (1 + groups.abs().max(dim=1).values)


def group_advantages(rewards: torch.Tensor, group_size: int, estimator: str = "grpo",
                     scale: str = "group") -> torch.Tensor:
    """Per-sequence advantages `[B]` from per-sequence rewards `[B]` grouped by prompt.

    - grpo: A = r - mean_group, divided by (std + 1e-4) of the group (`scale="group"`), of the
      whole batch (`"batch"`), or not at all (`"none"`, Dr. GRPO). std is Bessel-corrected, as torch.std.
    - rloo: A_i = r_i - mean of the other G-1 rewards of the group (`scale` ignored).
    - reinforce_pp: A = r - mean_group, then normalised over the batch: (A - mean) / (std + 1e-8).
    A group whose rewards are all equal gets A = 0 under every estimator.
    """
    groups = group_view(rewards.float(), group_size)
    mean = groups.mean(dim=1, keepdim=True)
    if estimator == "grpo":
        adv = groups - mean
        if scale == "group":
            adv = adv / (groups.std(dim=1, keepdim=True) + GRPO_STD_EPS)
        elif scale == "batch":
            adv = adv / (rewards.float().std() + GRPO_STD_EPS)
        elif scale != "none":
            raise ValueError(f"unknown reward scaling {scale!r}")
        return adv.reshape(-1)
    if estimator == "rloo":
        if group_size < 2:
            raise ValueError("rloo needs at least 2 samples per prompt")
        others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
        return (groups - others).reshape(-1)
    if estimator == "reinforce_pp":
        adv = (groups - mean).reshape(-1)
        if adv.numel() < 2 or adv.std() == 0:
            return adv - adv.mean()
        return (adv - adv.mean()) / (adv.std() + WHITEN_EPS)
    raise ValueError(f"unknown advantage estimator {estimator!r}")


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked tokens (nan when Var(returns) = 0)."""
    var_returns = masked_var(returns, mask)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / var_returns)
