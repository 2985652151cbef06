"""Held-out loss: fixed validation batches and their token-weighted loss and perplexity.

Pretraining's validation batches come from the bucketed batch plan (samples may be a list of lists
or the store's `SampleView`: only the samples of the `eval.max_batches` batches chosen are read);
SFT's carry loss masks and are cut shortest-first under the padded-token budget. Either kind is
scored by `validation_loss`, or through the stages of a pipeline by `pipeline_validation_loss`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from dswb.config.schema import Config
from dswb.engine.data.batches.batching import plan_bucketed
from dswb.engine.data.batches.collate import Batch, collate_padded
from dswb.engine.data.batches.loader import sample_lengths
from dswb.engine.distributed.pipeline import pipeline_of
from dswb.engine.train.losses import token_loss_sum
from dswb.engine.train.step import forward_loss_sum


def validation_batches(samples, cfg: Config, pad_id: int) -> list[Batch]:
    """A fixed, deterministic set of padded validation batches (at most `eval.max_batches`):
    the bucketed plan of (seed 0, epoch 0), its batches taken in order of their first sample."""
    if not len(samples):
        return []
    plan = plan_bucketed(sample_lengths(samples), cfg.batching.max_tokens, seed=0, epoch=0,
                         megabatch=cfg.batching.megabatch, max_len=cfg.model.max_seq_len, oversize="truncate")
    chosen = np.argsort(plan.batches.firsts(), kind="stable")[: cfg.eval.max_batches]
    return [collate_padded([_as_list(samples[i]) for i in plan.batches[int(k)]], pad_id, cfg.model.max_seq_len)
            for k in chosen]


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


def _as_list(x) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def validation_loss(model: torch.nn.Module, batches: list[Batch], device: torch.device, amp_dtype) -> dict:
    """`val_loss` (mean over every target token of `batches`) and `val_ppl`."""
    return _mean_loss(model, batches, lambda b: float(forward_loss_sum(model, b.to(device), amp_dtype, device)))


def pipeline_validation_loss(model: torch.nn.Module, batches: list[Batch], device: torch.device) -> dict:
    """`validation_loss` forward through the stages of a pipeline (only the last stage has the loss)."""
    pipe = pipeline_of(model)
    return _mean_loss(model, batches, lambda b: pipe.run(b.to(device), 1.0, backward=False, loss_fn=token_loss_sum),
                      reduce=lambda total: pipe.world.sum([total])[0])


@torch.no_grad()
def _mean_loss(model: torch.nn.Module, batches: list[Batch], loss_sum: Callable[[Batch], float],
               reduce: Callable[[float], float] = float) -> dict:
    if not batches:
        return {}
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for batch in batches:
            total += loss_sum(batch)
            tokens += batch.n_target
    finally:
        model.train(was_training)
    loss = reduce(total) / max(1, tokens)
    return {"val_loss": loss, "val_ppl": perplexity(loss)}


def held_out_loss(model: torch.nn.Module, batches: list[Batch], device: torch.device, amp_dtype) -> dict:
    """The validation loss of `batches` in any layout (one process, data parallel or a pipeline)."""
    if pipeline_of(model) is not None:
        return pipeline_validation_loss(model, batches, device)
    return validation_loss(model, batches, device, amp_dtype)
