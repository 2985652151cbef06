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


def expert_fraction(indices: torch.Tensor, n_experts: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[E]: the fraction of (real) tokens that chose each expert; sums to K."""
    if mask is not None:
        indices = indices[mask]
    counts = torch.bincount(indices.reshape(-1), minlength=n_experts).to(torch.float32)
    return counts / max(1, indices.shape[0])


def aux_loss(probs: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    n_experts = probs.shape[-1]
    f = expert_fraction(indices, n_experts, mask)
    p = probs[mask] if mask is not None else probs
    if p.shape[0] == 0:
        return probs.sum() * 0.0
    return n_experts * (f * p.mean(dim=0)).sum()


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
    per_sequence = (f * p).sum(dim=1)
    has_tokens = n_real > 0
    if not bool(has_tokens.any()):
        return probs.sum() * 0.0
    return per_sequence[has_tokens].mean()


def z_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    z = torch.logsumexp(logits.float(), dim=-1) ** 2
    z = z[mask] if mask is not None else z
    return z.mean() if z.numel() else logits.sum() * 0.0


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


def entropy_sum(probs: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of each token's routing entropy (nats)."""
    return -(probs * torch.log(probs.clamp(min=1e-20))).sum()
