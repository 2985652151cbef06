"""Scoring preference pairs with a model: the reward model's two rewards and DPO's two completion
log-probs of each pair, one forward over the chosen rows then the rejected rows (`collate_pairs`)."""

from __future__ import annotations

import torch

from dswb.engine.data.batches.pairs import EncodedPair, collate_pairs
from dswb.engine.model.backbone import backbone_of
from dswb.engine.model.device import autocast
from dswb.engine.preference.losses import sequence_logprobs

REF_BATCH = 256


def scalar_scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  per_token: bool = False) -> torch.Tensor:
    """A scalar-head model's score at each row's last real token `[B]` (right padding), or at every
    token `[B, T]` with `per_token` (PPO's values). The head is the model's `score` layer, applied to
    the backbone's last hidden states, so the result does not depend on how pad ids are set."""
    backbone = backbone_of(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    values = model.score(hidden).squeeze(-1).float()
    if per_token:
        return values
    last = attention_mask.long().sum(dim=1) - 1
    return values[torch.arange(values.shape[0], device=values.device), last.clamp(min=0)]


def pair_rewards(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, device: torch.device, amp_dtype,
                 max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) rewards `[B]` of a scalar-head model."""
    batch = collate_pairs(pairs, pad_id, max_len).to(device)
    with autocast(device, amp_dtype):
        scores = scalar_scores(model, batch.input_ids, batch.attention_mask)
    return scores[:len(pairs)], scores[len(pairs):]


def pair_logprobs(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, device: torch.device, amp_dtype,
                  average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) completion log-probs `[B]`: summed, or averaged per token (IPO)."""
    batch = collate_pairs(pairs, pad_id).to(device)
    with autocast(device, amp_dtype):
        logits = model(**batch.model_inputs()).logits
    total, count = sequence_logprobs(logits, batch.labels)
    if average:
        total = total / count.clamp(min=1)
    return total[:len(pairs)], total[len(pairs):]


@torch.no_grad()
def reference_logprobs(ref: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, device: torch.device, amp_dtype,
                       average: bool) -> torch.Tensor:
    """`[N, 2]` reference log-probs (chosen, rejected) of every pair, in order."""
    ref.eval()
    out = []
    for start in range(0, len(pairs), REF_BATCH):
        c, r = pair_logprobs(ref, pairs[start:start + REF_BATCH], pad_id, device, amp_dtype, average)
        out.append(torch.stack([c, r], dim=1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 2)
