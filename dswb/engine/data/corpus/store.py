"""The tokenized sample store: samples on disk in shards, read without holding them in memory.

A store is a directory (a cache entry `<cache_dir>/tok-<key>/`, see cache.py) holding:
- per shard `sNNNNN`: `sNNNNN.tokens.npy` (the shard's samples concatenated; uint16 when every id
  fits, else int32), `sNNNNN.offsets.npy` (int64, n+1 boundaries), optionally
  `sNNNNN.masks.npy` (uint8 0/1 loss masks parallel to the tokens) and `sNNNNN.docs.npy`
  (int32: how many consecutive samples each document gave, for splits by document);
- per split (`train`, `val`, ...): `<split>.index.npy`, the global indices of its samples in
  ascending order (int32, or int64 past 2^31 samples);
- `meta.json` (shard table, splits, stats, format version) and extra files (a trained tokenizer).

`Store` opens a complete store read-only: samples are read from the shard files with `pread`
(see `FileSlices`), offsets and split indices are memory-mapped, and shards are opened lazily
(at most `OPEN_SHARDS` at a time), so nothing holds one Python object per sample and memory stays
flat as the corpus grows. `Store.split(name)` gives the `SampleView` the trainer sees
(store_views.py). Writing a store (shards, meta.json, the atomic rename into place,
`StoreWriter`) is store_write.py.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from dswb.engine.data.corpus.file_slices import FileSlices
from dswb.engine.data.corpus.store_views import SampleView

STORE_VERSION = 2
OPEN_SHARDS = 256


class StoreError(ValueError):
    """A store directory is missing files or inconsistent (treated as a cache miss)."""


class Store:
    """A complete store directory, opened read-only (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
            if self.meta.get("store_version") != STORE_VERSION:
                raise StoreError(f"{self.path}: store version {self.meta.get('store_version')}")
            self.shards = [s["name"] for s in self.meta["shards"]]
            counts = np.array([s["samples"] for s in self.meta["shards"]], dtype=np.int64)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{self.path}: unreadable meta.json ({exc})") from None
        self.starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.starts[1:])
        self.has_masks = bool(self.meta["shards"]) and all(s.get("masks") for s in self.meta["shards"])
        self._open: OrderedDict[int, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def file(self, name: str) -> Path:
        return self.path / name

    def check(self) -> None:
        """Open every shard's headers and split index; StoreError if anything is missing or off."""
        for k, entry in enumerate(self.meta["shards"]):
            tokens, offsets, masks = self._load(k)
            if len(offsets) != entry["samples"] + 1 or len(tokens) != entry["tokens"]:
                raise StoreError(f"{self.path}: shard {entry['name']} does not match meta.json")
        for name in self.meta.get("splits", {}):
            index = self._index(name)
            if len(index) and (int(index[-1]) >= len(self) or int(index[0]) < 0):
                raise StoreError(f"{self.path}: split {name} points past the samples")
        with self._lock:
            self._open.clear()

    # -- shards ------------------------------------------------------------------------------
    def _load(self, k: int) -> tuple:
        name = self.shards[k]
        try:
            tokens = FileSlices(self.path / f"{name}.tokens.npy")
            offsets = np.load(self.path / f"{name}.offsets.npy", mmap_mode="r", allow_pickle=False)
            masks = FileSlices(self.path / f"{name}.masks.npy") if self.has_masks else None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path}: shard {name}: {exc}") from None
        if offsets.ndim != 1 or len(offsets) == 0 or int(offsets[-1]) != len(tokens):
            raise StoreError(f"{self.path}: shard {name}: offsets do not match tokens")
        if masks is not None and len(masks) != len(tokens):
            raise StoreError(f"{self.path}: shard {name}: masks do not match tokens")
        return tokens, offsets, masks

    def shard(self, k: int) -> tuple:
        """(tokens, offsets, masks or None) of shard k: tokens and masks as `FileSlices`, offsets
        memory-mapped (an LRU of open shards)."""
        with self._lock:
            if k in self._open:
                self._open.move_to_end(k)
                return self._open[k]
        arrays = self._load(k)
        with self._lock:
            self._open[k] = arrays
            while len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        return arrays

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, index within the shard) of global sample i."""
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return k, i - int(self.starts[k])

    def sample(self, i: int, masks: bool = False) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k, j = self.locate(i)
        tokens, offsets, mask_arr = self.shard(k)
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        if masks:
            if mask_arr is None:
                raise KeyError(f"{self.path}: this store has no loss masks")
            return mask_arr[lo:hi]
        return tokens[lo:hi]

    @property
    def lengths(self) -> np.ndarray:
        """Length of every sample (int32), computed once from the offsets."""
        if self._lengths is None:
            parts = [np.diff(np.asarray(self.shard(k)[1])).astype(np.int32) for k in range(len(self.shards))]
            self._lengths = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return self._lengths

    def doc_counts(self) -> np.ndarray:
        """Samples per document over all shards (shards written without documents count as 0 docs)."""
        parts = []
        for name in self.shards:
            path = self.path / f"{name}.docs.npy"
            if path.exists():
                parts.append(np.load(path, allow_pickle=False))
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    # -- splits ------------------------------------------------------------------------------
    def _index(self, name: str) -> np.ndarray:
        try:
            return np.load(self.path / f"{name}.index.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path}: split {name}: {exc}") from None

    def split(self, name: str) -> SampleView:
        if name not in self.meta.get("splits", {}):
            raise KeyError(f"{self.path}: no split '{name}' (has {', '.join(self.meta.get('splits', {}))})")
        return SampleView(self, self._index(name))

    def all(self) -> SampleView:
        return SampleView(self, None)


def open_store(path: Path, check: bool = True) -> Store | None:
    """The store at `path`, or None if absent or damaged (a damaged store is removed)."""
    path = Path(path)
    if not path.is_dir():
        return None
    try:
        store = Store(path)
        if check:
            store.check()
        return store
    except StoreError:
        shutil.rmtree(path, ignore_errors=True)
        return None
