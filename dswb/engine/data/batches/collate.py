"""Turn planned batches into tensors: the `Batch` every training step consumes.

Label convention (as in Hugging Face): `labels` are aligned with `input_ids`, NOT shifted, with
-100 where no loss is taken. The trainer shifts them itself:

    loss_sum = cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                             ignore_index=-100, reduction="sum")

and `Batch.n_target` counts exactly the tokens that sum covers (`labels[:, 1:] != -100`), so a
token-weighted mean over gradient-accumulation micro-batches is `sum(loss_sum) / sum(n_target)`.

Padded batches are right-padded and carry a 2D `attention_mask`; `position_ids` is None (the
model's default 0..L-1 is right for right padding).

Packed batches have `attention_mask = None` and `position_ids` restarting at 0 at every document
start. transformers (5.x, `masking_utils.find_packed_sequence_indices`) turns such position ids
into a block-diagonal causal mask for the sdpa and eager attention implementations (and
flash-attention uses them as varlen boundaries), so no token attends across a document boundary.
TRAP (verified on transformers 5.24, CPU, sdpa and eager): that detection only runs when the model
has no cache, and `LlamaModel` builds a `DynamicCache` whenever `use_cache` is on, which is the
config default even in train mode. Then the mask silently falls back to plain causal attention
across documents. Always call the model with `use_cache=False`: `Batch.model_inputs()` does.
The first token of every document is labelled -100 so that, after the shift, the last token of
one document never predicts the first token of the next. The padding tail of a row is its own
pseudo-document (positions 0.., labels -100). tests/test_packing.py checks that the packed loss
equals the padded loss for the same documents.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch

from dswb.engine.data.batches.batching import Segment

IGNORE_INDEX = -100


@dataclass
class Batch:
    """One micro-batch. Counts are plain ints, computed at collate time (no device sync)."""

    input_ids: torch.Tensor                 # [B, L] long
    attention_mask: torch.Tensor | None     # [B, L] long (1 = real token) or None (packed)
    labels: torch.Tensor                    # [B, L] long, aligned with input_ids, -100 = no loss
    position_ids: torch.Tensor | None       # [B, L] long (packed) or None (padded)
    n_real: int                             # real (non-pad) tokens
    n_padded: int                           # B * L
    n_target: int                           # tokens with a loss after the shift
    n_samples: int                          # documents (or document pieces) in the batch
    epoch: int = -1                         # plan position of this batch (set by BatchStream)
    index: int = -1
    next_state: dict | None = None          # stream state after this batch (for exact resume)

    @property
    def efficiency(self) -> float:
        """Real tokens over padded tokens."""
        return self.n_real / self.n_padded if self.n_padded else 0.0

    def stats(self) -> dict:
        """Per-batch report: real tokens, padded tokens, efficiency, samples, targets."""
        return {"real": self.n_real, "padded": self.n_padded, "efficiency": self.efficiency,
                "samples": self.n_samples, "target": self.n_target}

    def model_inputs(self) -> dict:
        """Keyword arguments for a Hugging Face causal LM forward (no labels: we take the loss).

        `use_cache=False` is not optional for packed batches: with a cache, transformers ignores
        the document boundaries in `position_ids` (see the module docstring).
        """
        out: dict = {"input_ids": self.input_ids, "use_cache": False}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids
        return out

    def _map_tensors(self, fn) -> "Batch":
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(value)
        return replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on `device` (non_blocking pays off from pinned memory)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """A copy in page-locked memory; unchanged when no CUDA device is present."""
        if not torch.cuda.is_available():
            return self
        return self._map_tensors(lambda t: t.pin_memory())


def collate_padded(samples: Sequence[Sequence[int]], pad_id: int, max_len: int | None = None,
                   loss_masks: Sequence[Sequence[int]] | None = None) -> Batch:
    """Right-pad samples (each cropped to `max_len`) to the batch's longest.

    `loss_masks` (one per sample, same length, 1 = a loss target) restricts the loss to some
    tokens, e.g. SFT's completion tokens; without it every real token is a target.
    """
    if not samples:
        raise ValueError("collate_padded needs at least one sample")
    rows = [list(s[:max_len]) if max_len else list(s) for s in samples]
    lens = [len(r) for r in rows]
    width = max(lens)
    if width == 0:
        raise ValueError("collate_padded got only empty samples")
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    target = np.zeros((len(rows), width), dtype=bool)
    for r, (row, n) in enumerate(zip(rows, lens)):
        ids[r, :n] = row
        mask[r, :n] = 1
        target[r, :n] = True if loss_masks is None else np.asarray(loss_masks[r][:n], dtype=bool)
    labels = np.where(target, ids, IGNORE_INDEX)
    return Batch(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        labels=torch.from_numpy(labels),
        position_ids=None,
        n_real=sum(lens),
        n_padded=len(rows) * width,
        n_target=int(target[:, 1:].sum()),
        n_samples=len(rows),
    )


def collate_packed(segments: Sequence[Sequence[Segment]], samples: Sequence[Sequence[int]],
                   pad_id: int, row_len: int, loss_masks: Sequence[Sequence[int]] | None = None) -> Batch:
    """One row per packed row: documents' segments concatenated, right-padded to the fullest row
    (at most `row_len`), positions restarting at each document, first token of each -100.
    `loss_masks` (per sample, 1 = a loss target) as in `collate_padded`."""
    if not segments:
        raise ValueError("collate_packed needs at least one row")
    fills = [sum(e - s for _, s, e in row) for row in segments]
    if max(fills) > row_len:
        raise ValueError(f"a packed row holds {max(fills)} tokens, more than row_len={row_len}")
    width = max(fills)
    if width == 0:
        raise ValueError("collate_packed got only empty rows")
    ids = np.full((len(segments), width), pad_id, dtype=np.int64)
    pos = np.zeros((len(segments), width), dtype=np.int64)
    labels = np.full((len(segments), width), IGNORE_INDEX, dtype=np.int64)
    n_docs = n_target = 0
    for r, row in enumerate(segments):
        at = 0
        for i, s, e in row:
            n = e - s
            if n <= 0:
                continue
            ids[r, at:at + n] = samples[i][s:e]
            pos[r, at:at + n] = np.arange(n)
            keep = ids[r, at + 1:at + n]
            if loss_masks is not None:
                keep = np.where(np.asarray(loss_masks[i][s + 1:e], dtype=bool), keep, IGNORE_INDEX)
            labels[r, at + 1:at + n] = keep
            at += n
            n_docs += 1
            n_target += int((keep != IGNORE_INDEX).sum())
        pos[r, at:] = np.arange(width - at)  # the padding tail is a pseudo-document of its own
    return Batch(
        input_ids=torch.from_numpy(ids),
        attention_mask=None,
        labels=torch.from_numpy(labels),
        position_ids=torch.from_numpy(pos),
        n_real=sum(fills),
        n_padded=len(segments) * width,
        n_target=n_target,
        n_samples=n_docs,
    )


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(ids [B, P], mask [B, P])`: rows right-aligned to the longest, mask 1 on real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.as_tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)
