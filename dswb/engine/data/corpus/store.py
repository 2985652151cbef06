"""The tokenized sample store: samples on disk in shards, read without holding them in memory.

A store is a directory (a cache entry `<cache_dir>/tok-<key>/`, see cache.py) holding:
- per shard `sNNNNN`: `sNNNNN.tokens.npy` (the shard's samples concatenated; uint16 when every id
  fits, else int32), `sNNNNN.offsets.npy` (int64, n+1 boundaries), optionally
  `sNNNNN.masks.npy` (uint8 0/1 loss masks parallel to the tokens) and `sNNNNN.docs.npy`
  (int32: how many consecutive samples each document gave, for splits by document);
- per split (`train`, `val`, ...): `<split>.index.npy`, the global indices of its samples in
  ascending order (int32, or int64 past 2^31 samples);
- `meta.json` (shard table, splits, stats, format version) and extra files (a trained tokenizer).

`SampleView` is the sequence the trainer sees: `len(view)`, `view[i]` (a read-only numpy array read
from the shard file with `pread`, see `FileSlices`), `view.lengths` (a numpy array, 4 bytes a
sample) and `view.masks`; offsets and split indices are memory-mapped. Nothing holds one Python
object per sample, so memory stays flat as the corpus grows; shards are opened lazily
(at most `OPEN_SHARDS` at a time). `StoreWriter` appends samples shard by shard into a temporary
directory that `commit()` renames into place, so a crash never leaves a half store that looks
valid; `write_shard` writes one shard (used by preparation workers). `write_samples` and
`load_or_write` are the small public API for stages that build samples in memory or as a stream
(e.g. SFT: token ids + loss masks).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from dswb.engine.data.corpus.file_slices import FileSlices
from dswb.util.atomic import atomic_file, fsync_tree, write_json_atomic

STORE_VERSION = 2
OPEN_SHARDS = 256
SHARD_TOKENS = 1 << 24  # tokens per shard written by StoreWriter (32 MB as uint16)


class StoreError(ValueError):
    """A store directory is missing files or inconsistent (treated as a cache miss)."""


def token_dtype(max_id: int) -> np.dtype:
    """uint16 when every id fits, else int32 (ids must be in [0, 2^31))."""
    if max_id >= 2**31:
        raise ValueError("token ids out of int32 range")
    return np.dtype(np.uint16) if max_id < 2**16 else np.dtype(np.int32)


def index_dtype(n: int) -> np.dtype:
    return np.dtype(np.int32) if n < 2**31 else np.dtype(np.int64)


def _save(path: Path, array: np.ndarray) -> None:
    """np.save to `path` via `<name>.part`, fsynced, then renamed (atomic per file)."""
    with atomic_file(path, "wb", fsync=True, tmp_name=path.name + ".part") as fh:
        np.save(fh, array, allow_pickle=False)


def write_shard(directory: Path, name: str, tokens: np.ndarray, offsets: np.ndarray,
                docs: np.ndarray | None = None, masks: np.ndarray | None = None) -> dict:
    """Write one shard's arrays; returns its entry for `meta.json` (written by the caller)."""
    if offsets.ndim != 1 or len(offsets) == 0 or int(offsets[-1]) != len(tokens):
        raise ValueError(f"shard {name}: offsets do not match tokens")
    if masks is not None and len(masks) != len(tokens):
        raise ValueError(f"shard {name}: {len(masks)} mask values for {len(tokens)} tokens")
    _save(directory / f"{name}.tokens.npy", tokens)
    _save(directory / f"{name}.offsets.npy", offsets.astype(np.int64, copy=False))
    if masks is not None:
        _save(directory / f"{name}.masks.npy", masks.astype(np.uint8, copy=False))
    if docs is not None:
        _save(directory / f"{name}.docs.npy", docs.astype(np.int32, copy=False))
    return {"name": name, "samples": len(offsets) - 1, "tokens": int(len(tokens)), "masks": masks is not None}


def write_meta(directory: Path, meta: dict) -> None:
    """`meta.json` via `meta.json.part` (not fsynced here: `commit` fsyncs every file)."""
    write_json_atomic(directory / "meta.json", {**meta, "store_version": STORE_VERSION}, fsync=False,
                      tmp_name="meta.json.part", indent=1, default=str)


def commit(tmp: Path, final: Path) -> Path:
    """Rename a complete temporary store into place; if another writer won, keep theirs."""
    fsync_tree(tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


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

    def split(self, name: str) -> "SampleView":
        if name not in self.meta.get("splits", {}):
            raise KeyError(f"{self.path}: no split '{name}' (has {', '.join(self.meta.get('splits', {}))})")
        return SampleView(self, self._index(name))

    def all(self) -> "SampleView":
        return SampleView(self, None)


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


class StoreWriter:
    """Append samples (token ids, optional 0/1 loss mask) shard by shard into `tmp`, then
    `commit(final, splits, meta)` renames it into place. Memory: one shard's samples."""

    def __init__(self, tmp: Path, masks: bool = False, shard_tokens: int = SHARD_TOKENS) -> None:
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.masks = masks
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self.n_samples = 0
        self._tokens: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self._docs: list[int] = []
        self._doc_open = 0
        self._pending = 0

    def add(self, ids: Sequence[int] | np.ndarray, mask: Sequence[int] | np.ndarray | None = None) -> int:
        """Add one sample; returns its global index."""
        arr = np.asarray(ids, dtype=np.int64)
        if self.masks:
            if mask is None or len(mask) != len(arr):
                raise ValueError(f"sample {self.n_samples}: a loss mask of {len(arr)} values is needed")
            self._masks.append(np.asarray(mask, dtype=np.uint8))
        elif mask is not None:
            raise ValueError("this writer was opened without masks")
        self._tokens.append(arr)
        self._doc_open += 1
        self._pending += len(arr)
        self.n_samples += 1
        if self._pending >= self.shard_tokens:
            self._flush()
        return self.n_samples - 1

    def end_document(self) -> None:
        """The samples added since the last call form one document (for splits by document)."""
        self._docs.append(self._doc_open)
        self._doc_open = 0

    def _flush(self) -> None:
        if not self._tokens:
            return
        lengths = np.fromiter((len(t) for t in self._tokens), dtype=np.int64, count=len(self._tokens))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(self._tokens)
        if flat.size and flat.min() < 0:
            raise ValueError("negative token id")
        tokens = flat.astype(token_dtype(int(flat.max()) if flat.size else 0))
        masks = np.concatenate(self._masks) if self.masks else None
        docs = np.array(self._docs, dtype=np.int32) if self._docs else None
        self.shards.append(write_shard(self.tmp, f"s{len(self.shards):05d}", tokens, offsets, docs, masks))
        self._tokens, self._masks, self._docs, self._pending = [], [], [], 0

    def commit(self, final: Path, splits: dict[str, np.ndarray], meta: dict | None = None,
               files: dict[str, bytes | str] | None = None) -> Store:
        """Write the last shard, split indices, meta and files; rename into `final`."""
        if self._doc_open:
            self.end_document()
        self._flush()
        for name, index in splits.items():
            index = np.asarray(index)
            _save(self.tmp / f"{name}.index.npy", index.astype(index_dtype(self.n_samples), copy=False))
        for name, content in (files or {}).items():
            (self.tmp / name).write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        write_meta(self.tmp, {**(meta or {}), "shards": self.shards, "splits": {n: len(i) for n, i in splits.items()},
                              "samples": self.n_samples})
        return Store(commit(self.tmp, Path(final)))


def write_samples(final: Path, splits: dict[str, Iterable], masks: bool = False, meta: dict | None = None,
                  files: dict[str, bytes | str] | None = None, shard_tokens: int = SHARD_TOKENS) -> Store:
    """Write named splits of samples into a new store at `final` (atomically) and open it.

    Each split is an iterable (a list or a generator) of token-id sequences, or, with
    `masks=True`, of `(ids, mask)` pairs. Samples are streamed to disk shard by shard.
    """
    final = Path(final)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = StoreWriter(tmp, masks=masks, shard_tokens=shard_tokens)
    try:
        bounds = {}
        for name, samples in splits.items():
            start = writer.n_samples
            for item in samples:
                if masks:
                    writer.add(*item)
                else:
                    writer.add(item)
            bounds[name] = np.arange(start, writer.n_samples)
        return writer.commit(final, bounds, meta, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_or_write(cache_dir: Path, key_parts: dict, build: Callable[[], dict[str, Iterable]],
                  masks: bool = False) -> tuple[Store, bool]:
    """The store for `key_parts` from the cache (hit=True), else `build()` its splits and write it.

    `build` returns `{split: samples}` as `write_samples` takes them, e.g. for SFT
    `{"train": ((ids, mask) for ...), "val": [...]}` with `masks=True`.
    """
    from dswb.engine.data.corpus.cache import cache_key, entry_dir

    final = entry_dir(Path(cache_dir), cache_key({**key_parts, "masks": masks}))
    store = open_store(final)
    if store is not None:
        return store, True
    final.parent.mkdir(parents=True, exist_ok=True)
    return write_samples(final, build(), masks=masks, meta={"key_parts": key_parts}), False
