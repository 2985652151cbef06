"""Held-out evaluation: token-weighted validation loss and perplexity."""

from __future__ import annotations

import math

import torch

from dswb.config.schema import Config
from dswb.engine.batching import plan_bucketed
from dswb.engine.collate import collate_padded
from dswb.engine.train_step import forward_loss_sum


def validation_batches(samples: list[list[int]], cfg: Config, pad_id: int) -> list:
    """A fixed, deterministic set of padded validation batches (at most `eval.max_batches`)."""
    if not samples:
        return []
    lengths = [len(s) for s in samples]
    plan = plan_bucketed(lengths, cfg.batching.max_tokens, seed=0, epoch=0, megabatch=cfg.batching.megabatch,
                         max_len=cfg.model.max_seq_len, oversize="truncate")
    batches = sorted(plan.batches, key=lambda b: b[0])[: cfg.eval.max_batches]
    return [collate_padded([samples[i] for i in b], pad_id, cfg.model.max_seq_len) for b in batches]


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def validation_loss(model: torch.nn.Module, batches: list, device: torch.device, amp_dtype) -> dict:
    if not batches:
        return {}
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        total += float(forward_loss_sum(model, batch, amp_dtype, device))
        tokens += batch.n_target
    model.train(was_training)
    loss = total / max(1, tokens)
    return {"val_loss": loss, "val_ppl": perplexity(loss)}
