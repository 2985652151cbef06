"""Batch planning: which samples go together, as pure functions of (lengths, seed, epoch).

No torch here: a plan is lists of sample indices (padded modes) or of document segments (packed
mode), so it can be tested, benchmarked and shown in a viewer without importing torch.

The padded-token budget is the rule every padded plan keeps: `len(batch) * longest <= max_tokens`
(the seed sketch budgeted the *sum* of lengths, which a padded batch can exceed many times over).
A plan is a pure function of its arguments, so a position inside an epoch is just
`(epoch, batch_index)`: resuming rebuilds the same plan and skips to that index.

Oversize samples (longer than `cap = min(max_tokens, max_len)`):
- `truncate`: keep the first `cap` tokens (counted in `Plan.truncated`);
- `reject`: drop the sample (counted in `Plan.rejected`);
- `split` (packed mode only): cut the document into `cap`-token pieces, each an independent
  document with positions restarting at 0 (counted in `PackedPlan.split`).
Empty samples (length 0) are dropped and counted in `empty`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

OVERSIZE_POLICIES = ("truncate", "reject")
PACKED_OVERSIZE_POLICIES = ("truncate", "reject", "split")

Segment = tuple[int, int, int]
"""A piece of one document inside a packed row: (sample_index, start, end), end exclusive."""


@dataclass
class Plan:
    """A padded plan: each batch is a list of sample indices; `lengths[i]` is the length sample i
    is cropped to (0 when it was rejected or empty)."""

    batches: list[list[int]]
    lengths: list[int]
    truncated: int = 0
    rejected: int = 0
    empty: int = 0

    def __len__(self) -> int:
        return len(self.batches)

    def batch_lengths(self, index: int) -> list[int]:
        """Lengths of the samples of batch `index`, as they will be collated."""
        return [self.lengths[i] for i in self.batches[index]]


@dataclass
class PackedPlan:
    """A packed plan: each batch is a list of rows, each row a list of `Segment`s whose total
    length is at most `row_len`."""

    batches: list[list[list[Segment]]]
    row_len: int
    truncated: int = 0
    rejected: int = 0
    split: int = 0
    empty: int = 0
    lengths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.batches)

    def batch_lengths(self, index: int) -> list[int]:
        """Filled length of each row of batch `index`."""
        return [row_fill(row) for row in self.batches[index]]


def row_fill(row: Sequence[Segment]) -> int:
    """Tokens a packed row holds."""
    return sum(end - start for _, start, end in row)


def batch_stats(lengths_in_batch: Sequence[int]) -> dict:
    """Real tokens, padded tokens (`n * longest`) and efficiency (real / padded) of one batch.

    For a packed batch pass the row fills: the same formula applies to rows.
    """
    real = int(sum(lengths_in_batch))
    padded = len(lengths_in_batch) * (max(lengths_in_batch) if lengths_in_batch else 0)
    return {"real": real, "padded": padded, "efficiency": real / padded if padded else 0.0}


def plan_summary(plan: Plan | PackedPlan, max_tokens: int) -> dict:
    """Totals over a whole plan: batches, efficiency, largest padded batch, batches over budget."""
    real = padded = largest = over = 0
    for i in range(len(plan)):
        s = batch_stats(plan.batch_lengths(i))
        real += s["real"]
        padded += s["padded"]
        largest = max(largest, s["padded"])
        over += s["padded"] > max_tokens
    n = len(plan)
    return {
        "batches": n,
        "real_tokens": real,
        "padded_tokens": padded,
        "efficiency": real / padded if padded else 0.0,
        "largest_padded": largest,
        "over_budget": over,
        "mean_real_per_batch": real / n if n else 0.0,
        "mean_padded_per_batch": padded / n if n else 0.0,
        "truncated": plan.truncated,
        "rejected": plan.rejected,
    }


def seq_len_at(step: int, warmup_steps: int, start: int, max_len: int) -> int:
    """Curriculum: the longest sequence at optimizer step `step`, growing linearly from `start`
    to `max_len` over `warmup_steps` (0 = off: always `max_len`)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return max_len
    start = min(start, max_len)
    return int(start + (max_len - start) * step / warmup_steps)


def length_histogram(lengths: Sequence[int], bins: int = 20) -> dict:
    """Histogram of sample lengths: `{"edges": [bins + 1 floats], "counts": [bins ints]}`."""
    if len(lengths) == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(np.asarray(lengths), bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch)])


def _effective_lengths(lengths: Sequence[int], cap: int, oversize: str,
                       policies: tuple[str, ...] = OVERSIZE_POLICIES) -> tuple[list[int], int, int, int]:
    """Crop or drop oversize samples. Returns (effective lengths, truncated, rejected, empty)."""
    if oversize not in policies:
        raise ValueError(f"oversize must be one of {policies}, got {oversize!r}")
    if cap < 1:
        raise ValueError(f"the length cap must be >= 1, got {cap}")
    out, truncated, rejected, empty = [], 0, 0, 0
    for n in lengths:
        if n <= 0:
            out.append(0)
            empty += 1
        elif n <= cap or oversize == "split":
            out.append(int(n))
        elif oversize == "truncate":
            out.append(cap)
            truncated += 1
        else:
            out.append(0)
            rejected += 1
    return out, truncated, rejected, empty


def _windows(order: np.ndarray, eff: Sequence[int], window_tokens: int) -> list[list[int]]:
    """Cut a shuffled order into consecutive windows holding about `window_tokens` tokens."""
    windows, current, tokens = [], [], 0
    for i in order.tolist():
        if eff[i] <= 0:
            continue
        current.append(i)
        tokens += eff[i]
        if tokens >= window_tokens:
            windows.append(current)
            current, tokens = [], 0
    if current:
        windows.append(current)
    return windows


def _greedy_padded(sorted_window: list[int], eff: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Form batches from samples sorted by ascending length, under the padded budget."""
    batches, current = [], []
    for i in sorted_window:
        if current and (len(current) + 1) * eff[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def plan_bucketed(lengths: Sequence[int], max_tokens: int, seed: int = 0, epoch: int = 0,
                  megabatch: int = 64, max_len: int | None = None,
                  oversize: str = "truncate") -> Plan:
    """Length-grouped padded batches under `len(batch) * longest <= max_tokens`.

    Shuffle (seed, epoch), cut into windows of about `megabatch * max_tokens` tokens, sort each
    window by length, fill batches greedily under the padded budget, then shuffle batch order.
    """
    cap = min(max_tokens, max_len) if max_len else max_tokens
    eff, truncated, rejected, empty = _effective_lengths(lengths, cap, oversize)
    rng = _rng(seed, epoch)
    order = rng.permutation(len(eff))
    batches: list[list[int]] = []
    for window in _windows(order, eff, megabatch * max_tokens):
        window.sort(key=lambda i: eff[i])  # stable: ties keep the shuffled order
        batches.extend(_greedy_padded(window, eff, max_tokens))
    batches = [batches[k] for k in rng.permutation(len(batches)).tolist()]
    return Plan(batches, eff, truncated, rejected, empty)


def plan_fixed(lengths: Sequence[int], batch_size: int, seed: int = 0, epoch: int = 0,
               max_len: int | None = None, oversize: str = "truncate") -> Plan:
    """The naive baseline: shuffled batches of `batch_size` samples. It ignores any token budget."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cap = max_len if max_len else max(max(lengths, default=1), 1)
    eff, truncated, rejected, empty = _effective_lengths(lengths, cap, oversize)
    order = [i for i in _rng(seed, epoch).permutation(len(eff)).tolist() if eff[i] > 0]
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    return Plan(batches, eff, truncated, rejected, empty)


def _pieces(i: int, n: int, row_len: int, oversize: str) -> list[Segment]:
    if n <= row_len:
        return [(i, 0, n)]
    if oversize == "split":
        return [(i, s, min(s + row_len, n)) for s in range(0, n, row_len)]
    return [(i, 0, row_len)]  # truncate (reject never reaches here)


def _best_fit_decreasing(pieces: list[Segment], row_len: int) -> list[list[Segment]]:
    """Pack pieces (longest first) into rows of `row_len`, each into the fullest row it fits."""
    pieces = sorted(pieces, key=lambda p: p[2] - p[1], reverse=True)
    rows: list[list[Segment]] = []
    free: list[tuple[int, int]] = []  # sorted (room left, row id) of rows not yet full
    for piece in pieces:
        n = piece[2] - piece[1]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
        else:
            room, r = row_len, len(rows)
            rows.append([])
        rows[r].append(piece)
        if room - n > 0:
            bisect.insort(free, (room - n, r))
    return rows


def plan_packed(lengths: Sequence[int], max_tokens: int, seed: int = 0, epoch: int = 0,
                row_len: int | None = None, oversize: str = "split", window: int = 64) -> PackedPlan:
    """Documents packed into rows of `row_len` tokens, `max_tokens // row_len` rows a batch.

    Shuffle (seed, epoch), cut into windows of about `window * max_tokens` tokens, pack each
    window best-fit-decreasing, then shuffle the rows and group them into batches. A document
    longer than `row_len` is split into pieces, truncated or rejected by `oversize`.
    """
    row_len = min(row_len or max_tokens, max_tokens)
    eff, truncated, rejected, empty = _effective_lengths(lengths, row_len, oversize,
                                                         PACKED_OVERSIZE_POLICIES)
    split = sum(1 for n in eff if n > row_len)
    rng = _rng(seed, epoch)
    order = rng.permutation(len(eff))
    rows: list[list[Segment]] = []
    for win in _windows(order, eff, window * max_tokens):
        pieces = [p for i in win for p in _pieces(i, eff[i], row_len, oversize)]
        rows.extend(_best_fit_decreasing(pieces, row_len))
    rows = [rows[k] for k in rng.permutation(len(rows)).tolist()]
    per_batch = max(1, max_tokens // row_len)
    batches = [rows[k:k + per_batch] for k in range(0, len(rows), per_batch)]
    return PackedPlan(batches, row_len, truncated, rejected, split, empty, eff)
