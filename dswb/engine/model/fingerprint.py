"""A model directory's fingerprint: what an adapter records about the base it was trained on, so
that a base that moved or changed is detected instead of silently mixed with the adapter.

Hashing every byte of a 70B model at every stage start would take minutes, so the fingerprint hashes
each weight file's name, size and the first and last MiB (a safetensors file starts with its
header: every tensor's name, dtype, shape and offset), plus `config.json` in full. It tells a
different or re-saved model from the right one; `dswb runs verify` checks dswb's own files in full.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

EDGE = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def model_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(EDGE))
            if size > 2 * EDGE:
                fh.seek(size - EDGE)
                h.update(fh.read(EDGE))
    return "sha256-edges:" + h.hexdigest()
