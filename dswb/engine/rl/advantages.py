"""Advantage estimators and masked statistics, as pure tensor functions.

Conventions: per-token tensors are `[B, T]` with a `mask` (1 = a completion token, 0 = padding
after the end); per-sequence tensors are `[B]`. Rows of a GRPO batch are grouped by prompt:
rows `g*G .. g*G+G-1` are the G completions of prompt g.

- `gae`: PPO's generalised advantage estimation (Schulman et al. 2016), TRL's recursion.
- `group_advantages`: one switch for the critic-free estimators: GRPO's group-normalised
  advantage (DeepSeekMath), RLOO's leave-one-out baseline (Ahmadian et al. 2024) and REINFORCE++
  with a group baseline and batch normalisation (after OpenRLHF's `reinforce_baseline`, per sequence
  rather than per token). Unscorable completions (NaN reward) are left out of every statistic and
  get advantage 0, as in TRL >= 1.6.
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


def nan_std(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Bessel-corrected std over the entries that are not NaN (TRL's `nanstd`); NaN where fewer than 2."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True).to(x.dtype)
    squares = torch.nansum((x - mean) ** 2, dim=dim, keepdim=True)
    var = torch.where(count > 1, squares / (count - 1).clamp(min=1), torch.full_like(count, float("nan")))
    std = var.sqrt()
    if keepdim:
        return std
    return std.squeeze() if dim is None else std.squeeze(dim)


def zero_std_groups(rewards: torch.Tensor, group_size: int, rtol: float = 1e-9) -> torch.Tensor:
    """`[num_groups]` bool: groups without learning signal: fewer than 2 scorable (non-NaN) rewards,
    or scorable rewards that are all equal (max - min <= rtol * (1 + max |r|) over them)."""
    groups = group_view(rewards.float(), group_size)
    scorable = ~torch.isnan(groups)
    hi = torch.where(scorable, groups, -torch.inf).max(dim=1).values
    lo = torch.where(scorable, groups, torch.inf).min(dim=1).values
    size = torch.where(scorable, groups.abs(), 0.0).max(dim=1).values
    return (scorable.sum(dim=1) < 2) | ((hi - lo) <= rtol * (1 + size))


def group_advantages(rewards: torch.Tensor, group_size: int, estimator: str = "grpo",
                     scale: str = "group") -> torch.Tensor:
    """Per-sequence advantages `[B]` from per-sequence rewards `[B]` grouped by prompt.

    A NaN reward marks an unscorable completion (as TRL >= 1.6): it is left out of every mean and std
    and gets A = 0. Means are over a group's scorable rewards, stds are Bessel-corrected over the
    scorable rewards they cover (`nan_std`).
    - grpo: A = r - mean_group, divided by (std + 1e-4) of the group (`scale="group"`), of the whole
      batch (`"batch"`), or not at all (`"none"`, Dr. GRPO).
    - rloo: A_i = r_i - mean of the group's other scorable rewards (`scale` ignored).
    - reinforce_pp: A = r - mean_group, divided by (std + 1e-8) of those values over the batch's
      scorable rows, not shifted: their batch mean is 0 up to rounding, and a shift would move the
      groups without signal off 0. Per sequence with Bessel's std; OpenRLHF's `reinforce_baseline`
      instead whitens per token (shifting by the token mean, dividing by the biased std), so long
      completions weigh more in its statistics and zero-variance groups come out non-zero.
    A group without signal (`zero_std_groups`: all scorable rewards equal, or fewer than 2) gets
    exactly A = 0 under every estimator.
    """
    groups = group_view(rewards.float(), group_size)
    unscorable = torch.isnan(groups)
    silent = zero_std_groups(rewards, group_size).unsqueeze(1) | unscorable
    centred = groups - torch.nanmean(groups, dim=1, keepdim=True)
    if estimator == "grpo":
        if scale == "group":
            centred = centred / (nan_std(groups, dim=1, keepdim=True) + GRPO_STD_EPS)
        elif scale == "batch":
            centred = centred / (nan_std(groups) + GRPO_STD_EPS)
        elif scale != "none":
            raise ValueError(f"unknown reward scaling {scale!r}")
        adv = centred
    elif estimator == "rloo":
        if group_size < 2:
            raise ValueError("rloo needs at least 2 samples per prompt")
        others = (torch.nansum(groups, dim=1, keepdim=True) - groups) / ((~unscorable).sum(dim=1, keepdim=True) - 1)
        adv = groups - others
    elif estimator == "reinforce_pp":
        centred = torch.where(silent & ~unscorable, 0.0, centred)
        adv = centred / (nan_std(centred) + WHITEN_EPS)
    else:
        raise ValueError(f"unknown advantage estimator {estimator!r}")
    return torch.where(silent, 0.0, adv).reshape(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked tokens (nan when Var(returns) = 0)."""
    var_returns = masked_var(returns, mask)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / var_returns)
