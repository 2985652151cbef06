"""Batch planning: which samples go together, as pure functions of (lengths, seed, epoch).

No torch here: a plan is arrays of sample indices (padded modes) or of document segments (packed
mode), so it can be tested, benchmarked and shown in a viewer without importing torch. Lengths
may be any sequence, typically the numpy array of a memory-mapped sample store; planning keeps
everything in numpy arrays (a few bytes per sample), never one Python object per sample, so a
plan for millions of samples costs tens of MB. Python loops run per window (a few thousand
samples at a time), not over the whole corpus at once.

The padded-token budget is the rule every padded plan keeps: `len(batch) * longest <= max_tokens`
(the blog's sketch budgeted the *sum* of lengths, which a padded batch can exceed many times over).
A plan is a pure function of its arguments, so a position inside an epoch is just
`(epoch, batch_index)`: resuming rebuilds the same plan and skips to that index.

Oversize samples (longer than `cap = min(max_tokens, max_len)`):
- `truncate`: keep the first `cap` tokens (counted in `Plan.truncated`);
- `reject`: drop the sample (counted in `Plan.rejected`);
- `split` (packed mode only): cut the document into `cap`-token pieces, each an independent
  document with positions restarting at 0 (counted in `PackedPlan.split`).
Empty samples (length 0) are dropped and counted in `empty`.

Rank sharding (`rank_position`): with R ranks, rank r takes every R-th batch of the endless
sequence of epochs, starting at batch r, so ranks are disjoint, together complete, and all take
one batch under the same budget per step; a rank's position is its count of batches taken.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

OVERSIZE_POLICIES = ("truncate", "reject")
PACKED_OVERSIZE_POLICIES = ("truncate", "reject", "split")

Segment = tuple[int, int, int]
"""A piece of one document inside a packed row: (sample_index, start, end), end exclusive."""


class Batches:
    """Groups of items stored flat (`items[bounds[k]:bounds[k + 1]]` is group k), read as lists.

    Indexing gives a list (of sample indices, or of rows for a packed plan); a slice gives a
    list of them; iteration and `==` against lists work as on a list of lists.
    """

    def __init__(self, items: np.ndarray, bounds: np.ndarray, convert: Callable[[np.ndarray], list] | None = None) -> None:
        self.items = items
        self.bounds = bounds
        self._convert = convert or (lambda a: a.tolist())

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self._convert(self.items[self.bounds[k]:self.bounds[k + 1]])

    def __iter__(self) -> Iterator[list]:
        return (self[k] for k in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Batches):
            return (np.array_equal(self.bounds, other.bounds) and np.array_equal(self.items, other.items))
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def firsts(self) -> np.ndarray:
        """The first item of each group (groups are never empty)."""
        return self.items[self.bounds[:-1]]


@dataclass
class Plan:
    """A padded plan: each batch is a list of sample indices; `lengths[i]` is the length sample i
    is cropped to (0 when it was rejected or empty)."""

    batches: Batches
    lengths: np.ndarray
    truncated: int = 0
    rejected: int = 0
    empty: int = 0

    def __len__(self) -> int:
        return len(self.batches)

    def batch_lengths(self, index: int) -> list[int]:
        """Lengths of the samples of batch `index`, as they will be collated."""
        return self.lengths[self.batches[index]].tolist()

    def per_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(real tokens, padded tokens) of every batch, vectorized."""
        lens = self.lengths[self.batches.items].astype(np.int64)
        starts = self.batches.bounds[:-1]
        real = np.add.reduceat(lens, starts) if len(starts) else np.zeros(0, np.int64)
        longest = np.maximum.reduceat(lens, starts) if len(starts) else np.zeros(0, np.int64)
        return real, longest * np.diff(self.batches.bounds)


def _rows_of(segments: np.ndarray, row_bounds: np.ndarray) -> Callable[[np.ndarray], list]:
    def convert(row_ids: np.ndarray) -> list:
        return [[tuple(seg) for seg in segments[row_bounds[r]:row_bounds[r + 1]].tolist()] for r in row_ids.tolist()]
    return convert


@dataclass
class PackedPlan:
    """A packed plan: each batch is a list of rows, each row a list of `Segment`s whose total
    length is at most `row_len`."""

    batches: Batches
    row_len: int
    truncated: int = 0
    rejected: int = 0
    split: int = 0
    empty: int = 0
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    row_fills: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.batches)

    def batch_lengths(self, index: int) -> list[int]:
        """Filled length of each row of batch `index`."""
        return self.row_fills[self.batches.items[self.batches.bounds[index]:self.batches.bounds[index + 1]]].tolist()

    def per_batch(self) -> tuple[np.ndarray, np.ndarray]:
        fills = self.row_fills[self.batches.items]
        starts = self.batches.bounds[:-1]
        if not len(starts):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.add.reduceat(fills, starts), np.maximum.reduceat(fills, starts) * np.diff(self.batches.bounds)


def row_fill(row: Sequence[Segment]) -> int:
    """Tokens a packed row holds."""
    return sum(end - start for _, start, end in row)


def batch_stats(lengths_in_batch: Sequence[int]) -> dict:
    """Real tokens, padded tokens (`n * longest`) and efficiency (real / padded) of one batch.

    For a packed batch pass the row fills: the same formula applies to rows.
    """
    real = int(sum(lengths_in_batch))
    padded = len(lengths_in_batch) * (max(lengths_in_batch) if len(lengths_in_batch) else 0)
    return {"real": real, "padded": padded, "efficiency": real / padded if padded else 0.0}


def plan_summary(plan: Plan | PackedPlan, max_tokens: int) -> dict:
    """Totals over a whole plan: batches, efficiency, largest padded batch, batches over budget."""
    real_b, padded_b = plan.per_batch()
    real, padded, n = int(real_b.sum()), int(padded_b.sum()), len(plan)
    return {
        "batches": n,
        "real_tokens": real,
        "padded_tokens": padded,
        "efficiency": real / padded if padded else 0.0,
        "largest_padded": int(padded_b.max()) if n else 0,
        "over_budget": int((padded_b > max_tokens).sum()),
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


def length_histogram(lengths: Sequence[int] | np.ndarray, bins: int = 20) -> dict:
    """Histogram of sample lengths: `{"edges": [bins + 1 floats], "counts": [bins ints]}`."""
    if len(lengths) == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(np.asarray(lengths), bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def rank_position(taken: int, rank: int, world_size: int) -> int:
    """Global batch ordinal (over the endless sequence of epochs) of the `taken`-th batch of `rank`."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return taken * world_size + rank


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch)])


def _effective_lengths(lengths: Sequence[int], cap: int, oversize: str,
                       policies: tuple[str, ...] = OVERSIZE_POLICIES) -> tuple[np.ndarray, int, int, int]:
    """Crop or drop oversize samples. Returns (effective lengths, truncated, rejected, empty)."""
    if oversize not in policies:
        raise ValueError(f"oversize must be one of {policies}, got {oversize!r}")
    if cap < 1:
        raise ValueError(f"the length cap must be >= 1, got {cap}")
    n = np.asarray(lengths, dtype=np.int64) if len(lengths) else np.zeros(0, np.int64)
    empty = n <= 0
    over = (n > cap) & ~empty
    eff = np.where(empty, 0, n).astype(np.int32)
    truncated = rejected = 0
    if oversize == "truncate":
        eff[over] = cap
        truncated = int(over.sum())
    elif oversize == "reject":
        eff[over] = 0
        rejected = int(over.sum())
    return eff, truncated, rejected, int(empty.sum())


def _windows(order: np.ndarray, eff: np.ndarray, window_tokens: int) -> Iterator[np.ndarray]:
    """Cut a shuffled order (empty samples skipped) into consecutive windows that each close as
    soon as they hold `window_tokens` tokens (the last one may hold fewer)."""
    kept = order[eff[order] > 0]
    cum = np.cumsum(eff[kept], dtype=np.int64)
    start, base = 0, 0
    while start < len(kept):
        end = int(np.searchsorted(cum, base + window_tokens, side="left"))
        if end >= len(kept):
            yield kept[start:]
            return
        yield kept[start:end + 1]
        base, start = int(cum[end]), end + 1


def _greedy_padded(sorted_lengths: list[int], max_tokens: int) -> list[int]:
    """Start offsets of batches formed greedily from ascending lengths under the padded budget."""
    starts, size = [], 0
    for k, n in enumerate(sorted_lengths):
        if size and (size + 1) * n > max_tokens:
            size = 0
        if size == 0:
            starts.append(k)
        size += 1
    return starts


def _regroup(items: np.ndarray, bounds: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups of a flat (items, bounds) layout put in `order`."""
    sizes = np.diff(bounds)[order]
    new_bounds = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(sizes, out=new_bounds[1:])
    gather = np.repeat(bounds[:-1][order] - new_bounds[:-1], sizes) + np.arange(int(new_bounds[-1]), dtype=np.int64)
    return items[gather], new_bounds


def _index_dtype(n: int):
    return np.int32 if n < 2**31 else np.int64


def plan_bucketed(lengths: Sequence[int], max_tokens: int, seed: int = 0, epoch: int = 0,
                  megabatch: int = 64, max_len: int | None = None,
                  oversize: str = "truncate") -> Plan:
    """Length-grouped padded batches under `len(batch) * longest <= max_tokens`.

    Shuffle (seed, epoch), cut into windows of about `megabatch * max_tokens` tokens, sort each
    window by length (stable: ties keep the shuffled order), fill batches greedily under the
    padded budget, then shuffle batch order.
    """
    cap = min(max_tokens, max_len) if max_len else max_tokens
    eff, truncated, rejected, empty = _effective_lengths(lengths, cap, oversize)
    rng = _rng(seed, epoch)
    order = rng.permutation(len(eff)).astype(_index_dtype(len(eff)))
    parts, starts, at = [], [], 0
    for window in _windows(order, eff, megabatch * max_tokens):
        window = window[np.argsort(eff[window], kind="stable")]
        starts.extend(at + s for s in _greedy_padded(eff[window].tolist(), max_tokens))
        parts.append(window)
        at += len(window)
    del order
    items = np.concatenate(parts) if parts else np.zeros(0, _index_dtype(len(eff)))
    bounds = np.array(starts + [at], dtype=np.int64)
    items, bounds = _regroup(items, bounds, rng.permutation(len(bounds) - 1))
    return Plan(Batches(items, bounds), eff, truncated, rejected, empty)


def plan_fixed(lengths: Sequence[int], batch_size: int, seed: int = 0, epoch: int = 0,
               max_len: int | None = None, oversize: str = "truncate") -> Plan:
    """The naive baseline: shuffled batches of `batch_size` samples. It ignores any token budget."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cap = max_len if max_len else max(int(np.max(lengths)) if len(lengths) else 1, 1)
    eff, truncated, rejected, empty = _effective_lengths(lengths, cap, oversize)
    order = _rng(seed, epoch).permutation(len(eff)).astype(_index_dtype(len(eff)))
    order = order[eff[order] > 0]
    bounds = np.append(np.arange(0, len(order), batch_size, dtype=np.int64), len(order))
    return Plan(Batches(order, bounds), eff, truncated, rejected, empty)


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
    split = int((eff > row_len).sum())
    rng = _rng(seed, epoch)
    order = rng.permutation(len(eff)).astype(_index_dtype(len(eff)))
    seg_parts, size_parts = [], []
    for win in _windows(order, eff, window * max_tokens):
        pieces = [p for i, n in zip(win.tolist(), eff[win].tolist()) for p in _pieces(i, n, row_len, oversize)]
        rows = _best_fit_decreasing(pieces, row_len)
        seg_parts.append(np.array([seg for row in rows for seg in row], dtype=np.int64).reshape(-1, 3))
        size_parts.append(np.array([len(row) for row in rows], dtype=np.int64))
    del order
    segments = np.concatenate(seg_parts) if seg_parts else np.zeros((0, 3), np.int64)
    sizes = np.concatenate(size_parts) if size_parts else np.zeros(0, np.int64)
    row_bounds = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=row_bounds[1:])
    seg_len = segments[:, 2] - segments[:, 1]
    fills = np.add.reduceat(seg_len, row_bounds[:-1]) if len(sizes) else np.zeros(0, np.int64)
    row_order = rng.permutation(len(sizes))
    per_batch = max(1, max_tokens // row_len)
    bounds = np.append(np.arange(0, len(sizes), per_batch, dtype=np.int64), len(sizes))
    return PackedPlan(Batches(row_order, bounds, _rows_of(segments, row_bounds)), row_len, truncated, rejected,
                      split, empty, eff, fills)
