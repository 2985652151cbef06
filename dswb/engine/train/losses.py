"""Language-model losses as pure functions.

`token_loss_sum` returns the *sum* of per-token cross-entropies; the trainer divides by the
number of target tokens in the whole optimizer step (all micro-batches), so gradient
accumulation weights every token equally, whatever the micro-batch sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies. `labels` are aligned with the inputs (unshifted),
    -100 where no loss is taken; the shift happens here."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def count_targets(labels: torch.Tensor) -> int:
    """Tokens that contribute to `token_loss_sum` for these labels."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
