"""Preference losses (reward model, DPO) and sequence log-probs, as pure tensor functions.

- Reward model (Bradley-Terry, as TRL's RewardTrainer): L = -mean(log sigmoid(r_c - r_r - margin))
  plus an optional centering term coef * mean((r_c + r_r)^2) that keeps rewards near zero.
- DPO (Rafailov et al. 2023): with h = (log pi(y_c) - log pi(y_r)) - (log ref(y_c) - log ref(y_r))
  and eps = `label_smoothing`:
  - sigmoid: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h). With eps > 0 this is
    conservative DPO (cDPO, Mitchell 2023): the cross-entropy against labels smoothed by eps, as
    TRL's sigmoid loss up to 0.28 (TRL 1.x's sigmoid ignores label smoothing). Its minimum is at a
    finite margin (beta h = log((1 - eps) / eps)), so it stops pushing there.
  - robust: rDPO (Chowdhury et al. 2024), TRL 1.x's formula
    ((1 - eps) * -log sigmoid(beta h) - eps * -log sigmoid(-beta h)) / (1 - 2 eps): unbiased under
    labels flipped with probability eps (its expectation over the flip is the clean DPO loss);
    equal to sigmoid at eps = 0.
  - ipo (Azar et al. 2023): (h - 1 / (2 beta))^2 on log-probs averaged over the completion's tokens
    (as TRL does for ipo).
  Implicit rewards beta * (log pi - log ref).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def reward_model_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None,
                      center_coef: float = 0.0) -> torch.Tensor:
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-pair DPO losses `[B]` and implicit rewards; inputs are sequence log-probs `[B]`
    (`label_smoothing`: cDPO's smoothing with sigmoid, rDPO's flip rate with robust)."""
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        if not 0 <= eps < 0.5:
            raise ValueError(f"the robust DPO loss needs label_smoothing in [0, 0.5), got {eps}")
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}")
    return {"losses": losses,
            "chosen_rewards": (beta * (policy_chosen - ref_chosen)).detach(),
            "rejected_rewards": (beta * (policy_rejected - ref_rejected)).detach()}


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probs of the labelled tokens, number of them) per row.

    `labels` are aligned with the inputs (unshifted, -100 where not scored); the shift happens here,
    as in `dswb.engine.train.losses.token_loss_sum`.
    """
    logits, labels = logits[:, :-1, :].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(dim=1), mask.sum(dim=1)
