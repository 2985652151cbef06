"""Writing a sample store (the layout: store.py): shard files, `meta.json`, the atomic commit.

Each array is written as `<name>.part`, fsynced and renamed (`save_array`); a whole store is
written into a temporary directory that `commit` fsyncs and renames into place, so a crash never
leaves a half store that looks valid. `write_shard` writes one shard (used by preparation workers);
`StoreWriter` appends samples (token ids, optional 0/1 loss masks) shard by shard, for stages
that build samples themselves (e.g. SFT: token ids + loss masks), and commits them with their
split indices.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from dswb.engine.data.corpus.store import STORE_VERSION, Store
from dswb.engine.data.corpus.store_views import index_dtype
from dswb.util.atomic import atomic_file, fsync_tree, write_json_atomic

SHARD_TOKENS = 1 << 24  # tokens per shard written by StoreWriter (32 MB as uint16)


def token_dtype(max_id: int) -> np.dtype:
    """uint16 when every id fits, else int32 (ids must be in [0, 2^31))."""
    if max_id >= 2**31:
        raise ValueError("token ids out of int32 range")
    return np.dtype(np.uint16) if max_id < 2**16 else np.dtype(np.int32)


def save_array(path: Path, array: np.ndarray) -> None:
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
    save_array(directory / f"{name}.tokens.npy", tokens)
    save_array(directory / f"{name}.offsets.npy", offsets.astype(np.int64, copy=False))
    if masks is not None:
        save_array(directory / f"{name}.masks.npy", masks.astype(np.uint8, copy=False))
    if docs is not None:
        save_array(directory / f"{name}.docs.npy", docs.astype(np.int32, copy=False))
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
            save_array(self.tmp / f"{name}.index.npy", index.astype(index_dtype(self.n_samples), copy=False))
        for name, content in (files or {}).items():
            (self.tmp / name).write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        write_meta(self.tmp, {**(meta or {}), "shards": self.shards, "splits": {n: len(i) for n, i in splits.items()},
                              "samples": self.n_samples})
        return Store(commit(self.tmp, Path(final)))
