"""On-disk cache of tokenized samples, so a second run or a resume does not tokenize again.

Keys: `cache_key(key_parts)` names an entry directory `entry_dir(cache_dir, key)`. The data
pipeline keeps sample *stores* there (store.py: sharded, memory-mapped); the functions below
(`save_entry`, `load_entry`, `load_or_build`) are the older whole-list API for small data.

An entry is a directory `<cache_dir>/tok-<sha256>/` named by the hash of its key parts (corpus
identity, tokenizer identity, settings, and `FORMAT_VERSION`). It holds, per named split,
`<split>.tokens.npy` (all samples concatenated; uint16 when every id fits, else int32) and
`<split>.offsets.npy` (int64, n+1 boundaries), plus `meta.json` and any extra files (e.g. a
tokenizer trained on the corpus). An entry is written under a temporary name and renamed into
place only when complete, so a crash never leaves a half entry that looks valid; arrays are read
with `allow_pickle=False` and memory-mapped. A damaged entry is treated as a miss and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from dswb.util.atomic import fsync_tree

FORMAT_VERSION = 2  # 2: sample stores (store.py) replaced whole-split arrays


def cache_key(key_parts: dict) -> str:
    """sha256 of the key parts (JSON with sorted keys) and the format version."""
    blob = json.dumps({"format_version": FORMAT_VERSION, **key_parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def file_identity(path: str | Path) -> dict:
    """Identity of a file for cache keys: absolute path, size and modification time (ns)."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def texts_identity(texts: Iterable[str]) -> str:
    """sha256 of a sequence of in-memory texts (length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@dataclass
class CacheEntry:
    """A complete cache entry, loaded."""

    path: Path
    splits: dict[str, list[list[int]]]
    meta: dict = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name


def entry_dir(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"tok-{key}"


def flatten(samples: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(flat tokens, offsets) for a list of samples; uint16 tokens when every id fits."""
    lengths = np.fromiter((len(s) for s in samples), dtype=np.int64, count=len(samples))
    offsets = np.zeros(len(samples) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(chain.from_iterable(samples), dtype=np.int64, count=int(offsets[-1]))
    if flat.size and (flat.min() < 0 or flat.max() >= 2**31):
        raise ValueError("token ids out of int32 range")
    dtype = np.uint16 if not flat.size or flat.max() < 2**16 else np.int32
    return flat.astype(dtype), offsets


def unflatten(flat: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    values = flat.tolist()
    bounds = offsets.tolist()
    return [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def load_entry(cache_dir: Path, key: str) -> CacheEntry | None:
    """The entry for `key`, or None if absent or unreadable (a damaged entry is removed)."""
    path = entry_dir(cache_dir, key)
    if not path.is_dir():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        splits = {}
        for name in meta["splits"]:
            flat = np.load(path / f"{name}.tokens.npy", mmap_mode="r", allow_pickle=False)
            offsets = np.load(path / f"{name}.offsets.npy", mmap_mode="r", allow_pickle=False)
            if offsets.ndim != 1 or len(offsets) == 0 or int(offsets[-1]) != len(flat):
                raise ValueError(f"{name}: offsets do not match tokens")
            splits[name] = unflatten(flat, offsets)
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(path, ignore_errors=True)
        return None
    return CacheEntry(path=path, splits=splits, meta=meta)


def save_entry(cache_dir: Path, key: str, splits: dict[str, list[list[int]]], meta: dict | None = None,
               files: dict[str, bytes | str] | None = None) -> Path:
    """Write an entry atomically (temp dir, then rename); if another writer won, keep theirs."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = entry_dir(cache_dir, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=cache_dir))
    try:
        for name, samples in splits.items():
            flat, offsets = flatten(samples)
            np.save(tmp / f"{name}.tokens.npy", flat, allow_pickle=False)
            np.save(tmp / f"{name}.offsets.npy", offsets, allow_pickle=False)
        for name, content in (files or {}).items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            (tmp / name).write_bytes(data)
        full_meta = {**(meta or {}), "splits": list(splits), "format_version": FORMAT_VERSION}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1, default=str), encoding="utf-8")
        fsync_tree(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # an entry appeared meanwhile (another run): it is equivalent
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_or_build(key_parts: dict, build: Callable[[], list[list[int]]],
                  cache_dir: Path) -> tuple[list[list[int]], bool]:
    """Samples for `key_parts` from the cache (hit=True), else `build()` them and store them."""
    key = cache_key(key_parts)
    entry = load_entry(cache_dir, key)
    if entry is not None:
        return entry.splits["samples"], True
    samples = build()
    save_entry(cache_dir, key, {"samples": samples}, meta={"key_parts": key_parts})
    return samples, False
