"""Held-out accuracy on preference pairs: the reward model's (does the chosen side score higher?)
and DPO's (does the implicit reward prefer the chosen side?)."""

from __future__ import annotations

import torch

from dswb.engine.data.batches.pairs import EncodedPair
from dswb.engine.preference.scoring import REF_BATCH, pair_logprobs, pair_rewards


@torch.no_grad()
def pair_accuracy(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, device: torch.device, amp_dtype,
                  batch_size: int = 256, prefix: str = "") -> dict:
    """Share of pairs whose chosen side scores higher: all, and per kind of negative when known."""
    if not pairs:
        return {}
    was_training = model.training
    model.eval()
    wins: list[bool] = []
    try:
        for start in range(0, len(pairs), batch_size):
            rc, rr = pair_rewards(model, pairs[start:start + batch_size], pad_id, device, amp_dtype)
            wins.extend((rc > rr).tolist())
    finally:
        model.train(was_training)
    out = {f"{prefix}pair_acc": sum(wins) / len(wins)}
    for kind in ("near", "random"):
        picked = [w for w, p in zip(wins, pairs) if p.kind == kind]
        if picked:
            out[f"{prefix}pair_acc_{kind}"] = sum(picked) / len(picked)
    return out


@torch.no_grad()
def preference_accuracy(policy: torch.nn.Module, ref_lp: torch.Tensor, pairs: list[EncodedPair], pad_id: int,
                        device: torch.device, amp_dtype, average: bool) -> float:
    """Share of pairs whose implicit DPO reward prefers the chosen side (`ref_lp`: `[N, 2]`)."""
    if not pairs:
        return float("nan")
    was_training = policy.training
    policy.eval()
    wins = 0
    try:
        for start in range(0, len(pairs), REF_BATCH):
            c, r = pair_logprobs(policy, pairs[start:start + REF_BATCH], pad_id, device, amp_dtype, average)
            ref = ref_lp[start:start + len(c)].to(c.device)
            wins += int(((c - ref[:, 0]) > (r - ref[:, 1])).sum())
    finally:
        policy.train(was_training)
    return wins / len(pairs)
