"""Preference pairs as training data: encoding, a resumable stream of micro-batches, collation.

A pair is encoded as two full sequences, `prompt + chosen` and `prompt + rejected`, each with a
loss mask that is 1 on the completion tokens only (see `dswb.engine.data.records.chat`). `collate_pairs`
stacks the B chosen rows and then the B rejected rows into one right-padded batch of 2B rows, so a
model scores both sides in one forward. `PairStream` yields micro-batches of `batch_size` pair
indices in a seeded order that changes every epoch; its position `(epoch, index)` resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dswb.engine.data.batches.collate import Batch, collate_padded
from dswb.engine.data.records.chat import encode_chat, encode_plain
from dswb.engine.data.records.posttrain import PreferenceRecord


@dataclass
class EncodedPair:
    chosen: list[int]
    chosen_mask: list[int]
    rejected: list[int]
    rejected_mask: list[int]
    margin: float | None = None
    kind: str = ""


def encode_pair(tokenizer: Any, record: PreferenceRecord) -> EncodedPair:
    if record.is_chat:
        c, cm = encode_chat(tokenizer, list(record.prompt) + list(record.chosen), where=record.where)
        r, rm = encode_chat(tokenizer, list(record.prompt) + list(record.rejected), where=record.where)
    else:
        c, cm = encode_plain(tokenizer, record.prompt, record.chosen)  # type: ignore[arg-type]
        r, rm = encode_plain(tokenizer, record.prompt, record.rejected)  # type: ignore[arg-type]
    return EncodedPair(c, cm, r, rm, record.margin, record.kind)


def collate_pairs(pairs: list[EncodedPair], pad_id: int, max_len: int | None = None) -> Batch:
    """Rows 0..B-1 are the chosen sequences, rows B..2B-1 the rejected ones (labels on completions)."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    masks = [p.chosen_mask for p in pairs] + [p.rejected_mask for p in pairs]
    return collate_padded(rows, pad_id, max_len, loss_masks=masks)


def margins(pairs: list[EncodedPair]) -> torch.Tensor | None:
    if all(p.margin is None for p in pairs):
        return None
    return torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)


class PairStream:
    """Endless, seeded, resumable stream of micro-batches of pair indices."""

    def __init__(self, n_pairs: int, batch_size: int, seed: int) -> None:
        if n_pairs == 0:
            from dswb.errors import UserError
            raise UserError("no preference pairs to train on")
        self.n, self.batch_size, self.seed = n_pairs, min(batch_size, n_pairs), seed
        self.epoch = self.index = 0
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._order_epoch = epoch
        return self._order  # type: ignore[return-value]

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size   # a ragged tail is dropped: every micro-batch has batch_size pairs

    def __iter__(self) -> "PairStream":
        return self

    def __next__(self) -> list[int]:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        start = self.index * self.batch_size
        picked = self.order(self.epoch)[start:start + self.batch_size].tolist()
        self.index += 1
        return picked

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def mean_pair_length(pairs: list[EncodedPair]) -> float:
    """Mean tokens of one side of a pair (the context of the FLOPs count)."""
    return sum(len(p.chosen) + len(p.rejected) for p in pairs) / max(1, 2 * len(pairs))
