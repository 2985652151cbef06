"""Sequence-length warmup ("progressive learning" in the seed): crop batches to the current
longest length. Cropping happens on the consumer side, after prefetch, so the data position and
the crop are both a pure function of the step (exact resume).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from dswb.engine.losses import IGNORE_INDEX


def crop_batch(batch, seq_len: int, pad_id: int | None = None):
    """`batch` with every sequence cut to at most `seq_len` tokens, counts recomputed."""
    width = batch.input_ids.shape[1]
    if seq_len >= width:
        return batch
    cut = lambda t: None if t is None else t[:, :seq_len].contiguous()  # noqa: E731
    input_ids, labels = cut(batch.input_ids), cut(batch.labels)
    mask = cut(batch.attention_mask)
    if mask is not None:
        n_real = int(mask.sum())
    elif pad_id is not None:
        n_real = int((input_ids != pad_id).sum())
    else:
        n_real = int((labels != IGNORE_INDEX).sum())
    rows = input_ids.shape[0]
    if mask is not None:
        # A row cropped to nothing but padding cannot happen: padded rows start with real tokens.
        assert bool(torch.all(mask[:, 0] == 1)) or rows == 0
    return replace(batch, input_ids=input_ids, labels=labels, attention_mask=mask,
                   position_ids=cut(batch.position_ids), n_real=n_real, n_padded=rows * seq_len,
                   n_target=int((labels[:, 1:] != IGNORE_INDEX).sum()))
