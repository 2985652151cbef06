"""Views of a store's samples: the sequences the trainer and the batch planner see.

`SampleView` (a split of a `Store`, or all of it): `len(view)`, `view[i]` (a read-only numpy
array read from the shard file with `pread`), `view[a:b]` (a view), `view.take(positions)` (a
batch's samples in one pass), `view.lengths` (a numpy array, 4 bytes a sample), `view.masks` (a
`MaskView` of the loss masks, or None). A view holds the store and, for a split, its memory-mapped
index (`index_dtype`: int32, or int64 past 2^31 samples); nothing holds one Python object per sample.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from dswb.engine.data.corpus.store import Store


def index_dtype(n: int) -> np.dtype:
    return np.dtype(np.int32) if n < 2**31 else np.dtype(np.int64)


class SampleView(Sequence):
    """A sequence of samples of a store: numpy slices of its memory maps (see module docstring)."""

    def __init__(self, store: Store, index: np.ndarray | None) -> None:
        self.store = store
        self.index = index
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.store) if self.index is None else len(self.index)

    def _global(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return i if self.index is None else int(self.index[i])

    def __getitem__(self, i):
        if isinstance(i, slice):
            positions = np.arange(len(self))[i]
            index = positions if self.index is None else np.asarray(self.index)[positions]
            return SampleView(self.store, index.astype(index_dtype(len(self.store)), copy=False))
        return self.store.sample(self._global(int(i)))

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def take(self, positions: Sequence[int], masks: bool = False) -> list[np.ndarray]:
        """The samples (or loss masks) at `positions`, read in one pass (a batch's worth)."""
        pos = np.asarray(positions, dtype=np.int64)
        g = pos if self.index is None else np.asarray(self.index)[pos]
        shards = np.searchsorted(self.store.starts, g, side="right") - 1
        opened: dict[int, tuple] = {}
        out = []
        for gi, k in zip(g.tolist(), shards.tolist()):
            if k not in opened:
                opened[k] = self.store.shard(k)
            tokens, offsets, mask_arr = opened[k]
            j = gi - int(self.store.starts[k])
            lo, hi = int(offsets[j]), int(offsets[j + 1])
            out.append((mask_arr if masks else tokens)[lo:hi])
        return out

    @property
    def lengths(self) -> np.ndarray:
        """Sample lengths (int32 numpy array), in view order."""
        if self._lengths is None:
            all_lengths = self.store.lengths
            self._lengths = all_lengths if self.index is None else all_lengths[np.asarray(self.index)]
        return self._lengths

    @property
    def masks(self) -> "MaskView | None":
        """The loss masks, parallel to the samples, or None when the store has none."""
        return MaskView(self) if self.store.has_masks else None

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum(dtype=np.int64))

    def tolist(self) -> list[list[int]]:
        """Every sample as a list of ints (for small data and tests only)."""
        return [self[i].tolist() for i in range(len(self))]


class MaskView(Sequence):
    """The loss masks of a `SampleView`, indexable like it."""

    def __init__(self, view: SampleView) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return MaskView(self.view[i])
        return self.view.store.sample(self.view._global(int(i)), masks=True)

    def take(self, positions: Sequence[int]) -> list[np.ndarray]:
        return self.view.take(positions, masks=True)
