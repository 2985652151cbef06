"""Cache keys of tokenized data, so a second run or a resume does not tokenize again.

`cache_key(key_parts)` is the sha256 of the key parts (corpus identity: `file_identity` of each
file or `texts_identity` of in-memory texts; tokenizer identity; settings) and `FORMAT_VERSION`;
it names an entry directory `entry_dir(cache_dir, key)` = `<cache_dir>/tok-<key>/`. The data
pipeline keeps a sample store there (store.py: sharded, memory-mapped, written under a temporary
name and renamed into place only when complete; a damaged store is treated as a miss and rebuilt).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

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


def entry_dir(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"tok-{key}"
