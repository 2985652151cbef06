"""Held-out evaluation: token-weighted validation loss and perplexity.

Validation samples may be a list of lists or a memory-mapped `SampleView` of the sample store;
only the samples of the `eval.max_batches` batches chosen are read.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dswb.config.schema import Config
from dswb.engine.data.batches.batching import plan_bucketed
from dswb.engine.data.batches.collate import collate_padded
from dswb.engine.data.batches.loader import sample_lengths
from dswb.engine.train.step import forward_loss_sum


def validation_batches(samples, cfg: Config, pad_id: int) -> list:
    """A fixed, deterministic set of padded validation batches (at most `eval.max_batches`):
    the bucketed plan of (seed 0, epoch 0), its batches taken in order of their first sample."""
    if not len(samples):
        return []
    plan = plan_bucketed(sample_lengths(samples), cfg.batching.max_tokens, seed=0, epoch=0,
                         megabatch=cfg.batching.megabatch, max_len=cfg.model.max_seq_len, oversize="truncate")
    chosen = np.argsort(plan.batches.firsts(), kind="stable")[: cfg.eval.max_batches]
    return [collate_padded([_as_list(samples[i]) for i in plan.batches[int(k)]], pad_id, cfg.model.max_seq_len)
            for k in chosen]


def _as_list(x) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


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
