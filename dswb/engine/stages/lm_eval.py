"""Held-out loss for stages whose samples carry loss masks (SFT): fixed, length-sorted batches
under the padded-token budget, and the token-weighted loss over the masked tokens."""

from __future__ import annotations

import torch

from dswb.engine.data.batches.collate import Batch, collate_padded
from dswb.engine.eval.loss import perplexity
from dswb.engine.train.step import forward_loss_sum


def masked_validation_batches(samples: list[list[int]], masks: list[list[int]], pad_id: int, max_tokens: int,
                              max_batches: int, max_len: int) -> list[Batch]:
    """Up to `max_batches` padded batches of the shortest-first samples, each within `max_tokens`."""
    order = sorted(range(len(samples)), key=lambda i: (len(samples[i]), i))
    batches, current, longest = [], [], 0
    for i in order:
        n = min(len(samples[i]), max_len)
        if current and max(longest, n) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
            if len(batches) == max_batches:
                break
        current.append(i)
        longest = max(longest, n)
    if current and len(batches) < max_batches:
        batches.append(current)
    return [collate_padded([samples[i] for i in b], pad_id, max_len, loss_masks=[masks[i] for i in b])
            for b in batches]


@torch.no_grad()
def masked_validation_loss(model: torch.nn.Module, batches: list[Batch], device: torch.device, amp_dtype) -> dict:
    if not batches:
        return {}
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for batch in batches:
            batch = batch.to(device)
            total += float(forward_loss_sum(model, batch, amp_dtype, device))
            tokens += batch.n_target
    finally:
        model.train(was_training)
    loss = total / max(1, tokens)
    return {"val_loss": loss, "val_ppl": perplexity(loss)}
