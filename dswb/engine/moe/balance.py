"""Load-balancing formulas for Mixture-of-Experts routers, as pure functions of one layer's router output.

Shapes: `probs` [T, E] (each token's routing distribution: softmax of the logits for Qwen3-MoE and
Mixtral, DeepSeek-V3's sigmoid scores normalised to sum 1), `indices` [T, K] (the chosen experts), `mask`
[T] (True for real tokens, padding excluded), `logits` [T, E].

- `aux_loss`: the Switch / Mixtral load-balancing loss as transformers' `load_balancing_loss_func`:
  `E * sum_i f_i * P_i`, f_i = the fraction of tokens that chose expert i (so sum_i f_i = K), P_i = the mean
  probability of expert i. K at perfect balance, K * E when every token goes to the same experts.
- `seq_aux_loss`: DeepSeek-V3's complementary sequence-wise balance loss (their eq. 17-20), per sequence
  `sum_i f_i * P_i` with f_i = E / (K * T) * (tokens of the sequence that chose i), P_i the sequence's mean
  probability of i; averaged over the sequences (1 at perfect balance), times alpha by the caller.
- `z_loss`: ST-MoE's router z-loss, the mean over tokens of logsumexp(logits)^2.
- `bias_update`: DeepSeek-V3's auxiliary-loss-free balancing, b_i += gamma * sign(mean load - load_i).
"""

from __future__ import annotations

import torch


def _weights(n: int, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """[T] 1.0 for real tokens, 0.0 for padding (masks by weights, not indexing: no device sync)."""
    if mask is None:
        return torch.ones(n, dtype=torch.float32, device=like.device)
    return mask.to(device=like.device, dtype=torch.float32)


def expert_counts(indices: torch.Tensor, n_experts: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[E] int64: how many real tokens chose each expert."""
    flat = indices.reshape(-1)
    ones = (torch.ones_like(flat) if mask is None
            else mask.to(flat.device).reshape(-1, 1).expand(-1, indices.shape[-1]).reshape(-1).to(flat.dtype))
    return torch.zeros(n_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, ones.long())


def aux_loss(probs: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    n_experts = probs.shape[-1]
    w = _weights(probs.shape[0], mask, probs)
    n_real = w.sum().clamp(min=1.0)
    f = expert_counts(indices, n_experts, mask).to(probs.dtype) / n_real
    p = (probs * w[:, None]).sum(dim=0) / n_real
    return n_experts * (f * p).sum()


def seq_aux_loss(probs: torch.Tensor, indices: torch.Tensor, batch: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens are `batch` sequences of T = tokens / batch positions each, row-major (the router's
    flattened [B, T] input)."""
    n_experts, top_k = probs.shape[-1], indices.shape[-1]
    probs, indices = probs.reshape(batch, -1, n_experts), indices.reshape(batch, -1, top_k)
    real = (mask.reshape(batch, -1) if mask is not None else torch.ones(probs.shape[:2], dtype=torch.bool,
                                                                           device=probs.device)).to(probs.dtype)
    n_real = real.sum(dim=1)                                              # [B]
    chosen = torch.zeros_like(probs).scatter_(2, indices, 1.0) * real[..., None]   # [B, T, E]
    f = chosen.sum(dim=1) * n_experts / (top_k * n_real.clamp(min=1))[:, None]      # [B, E]
    p = (probs * real[..., None]).sum(dim=1) / n_real.clamp(min=1)[:, None]          # [B, E]
    has_tokens = (n_real > 0).to(probs.dtype)
    return ((f * p).sum(dim=1) * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)


def z_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    w = _weights(logits.shape[0], mask, logits)
    z = torch.logsumexp(logits.float(), dim=-1) ** 2
    return (z * w).sum() / w.sum().clamp(min=1.0)


def bias_update(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """The new bias: each expert's bias moves by gamma towards balance (up when it got fewer tokens than
    the mean, down when more, unchanged when exactly the mean)."""
    load = load.to(torch.float64)
    return bias + gamma * torch.sign(load.mean() - load).to(bias.dtype)


def routing_probs(logits: torch.Tensor, scoring: str) -> torch.Tensor:
    """[T, E] routing distribution: softmax, or sigmoid scores normalised per token (DeepSeek-V3)."""
    if scoring == "sigmoid":
        scores = torch.sigmoid(logits.float())
        return scores / scores.sum(dim=-1, keepdim=True).clamp(min=1e-20)
    return torch.softmax(logits.float(), dim=-1)


def entropy_sum(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over (real) tokens of each token's routing entropy (nats)."""
    per_token = -(probs * torch.log(probs.clamp(min=1e-20))).sum(dim=-1)
    return (per_token * _weights(probs.shape[0], mask, probs)).sum()
