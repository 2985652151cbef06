"""The read phase of a file corpus preparation: blocks -> workers (parse, clean, hash) -> dedup ->
text shards, in corpus order, with its position and counters saved after every text shard.

The main process reads blocks (readers.iter_blocks) and submits them to the pool, keeping at most
`2 x workers + 1` in flight; results are handled strictly in order, so the first occurrence of a
duplicate is the one kept and the first bad record is the one reported, whatever the workers.
Text shard files: see work.py. Used by prepare.py.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dswb.engine.data.corpus.blocks import start_position
from dswb.engine.data.corpus.dedup import HashSet64, first_occurrences, near_duplicates
from dswb.engine.data.corpus.readers import MAX_SKIPPED_EXAMPLES, iter_blocks
from dswb.engine.data.corpus.store_write import save_array
from dswb.engine.data.corpus.work import BlockResult, BlockSettings, process_block
from dswb.errors import UserError


@dataclass
class ReadState:
    """Counters and position of the read phase (saved in progress.json after each text shard)."""

    position: dict = field(default_factory=start_position)
    text_shards: int = 0
    done: bool = False
    records: int = 0
    empty: int = 0
    bad: int = 0
    bad_examples: list[str] = field(default_factory=list)
    cleaned_away: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    documents: int = 0
    chars: int = 0
    text_bytes: int = 0
    input_bytes: int = 0
    resumed_shards: int = 0


class _TextShard:
    """The text shard being written: documents appended to `.bin.part`, arrays at close."""

    def __init__(self, directory: Path, k: int) -> None:
        self.directory, self.k = directory, k
        self.fh = open(directory / f"text-{k:05d}.bin.part", "wb")
        self.offsets = [0]
        self.hashes: list[np.ndarray] = []
        self.bands: list[np.ndarray] = []

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def add(self, texts: list[str], hashes: np.ndarray | None, bands: np.ndarray | None) -> int:
        written = 0
        for text in texts:
            data = text.encode("utf-8")
            self.fh.write(data)
            written += len(data)
            self.offsets.append(self.offsets[-1] + len(data))
        if hashes is not None:
            self.hashes.append(hashes)
        if bands is not None:
            self.bands.append(bands)
        return written

    def close(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        name = f"text-{self.k:05d}"
        save_array(self.directory / f"{name}.idx.npy", np.asarray(self.offsets, dtype=np.int64))
        if self.hashes:
            save_array(self.directory / f"{name}.hash.npy", np.concatenate(self.hashes))
        if self.bands:
            save_array(self.directory / f"{name}.bands.npy", np.concatenate(self.bands))
        os.replace(self.directory / f"{name}.bin.part", self.directory / f"{name}.bin")

    def discard(self) -> None:
        self.fh.close()
        (self.directory / f"text-{self.k:05d}.bin.part").unlink(missing_ok=True)


def load_seen(tmp: Path, n_shards: int, suffix: str) -> HashSet64:
    seen = HashSet64()
    for k in range(n_shards):
        path = tmp / f"text-{k:05d}.{suffix}.npy"
        if path.exists():
            seen.add(np.load(path, allow_pickle=False).ravel())
    return seen


def read_phase(s: Any, tmp: Path, state: ReadState, pool, save: Callable[[], None],
                progress: Any) -> None:
    """Read every remaining block into text shards under `tmp`, updating `state` (see the module docstring)."""
    bs = BlockSettings(s.text_field, s.bad_lines == "error", s.clean, s.dedup, s.near)
    exact = load_seen(tmp, state.text_shards, "hash") if s.dedup else None
    near = load_seen(tmp, state.text_shards, "bands") if s.near else None
    shard = _TextShard(tmp, state.text_shards)
    window: deque[tuple[dict, int, Any]] = deque()
    depth = 2 * max(1, s.workers) + 1

    def handle(end: dict, in_bytes: int, result: BlockResult) -> None:
        nonlocal shard
        if result.fatal:
            raise UserError(result.fatal)
        bad = result.bad or []
        if bad and s.bad_lines == "error":
            raise UserError(bad[0])
        state.records += result.records
        state.empty += result.empty
        state.cleaned_away += result.cleaned_away
        state.bad += len(bad)
        state.bad_examples.extend(bad[:max(0, MAX_SKIPPED_EXAMPLES - len(state.bad_examples))])
        keep = np.ones(len(result.texts), dtype=bool)
        if exact is not None and len(keep):
            keep = first_occurrences(result.hashes) & ~exact.contains(result.hashes)
            state.exact_duplicates += int((~keep).sum())
            exact.add(result.hashes[keep])
        if near is not None and len(keep):
            is_near = near_duplicates(result.bands, near, keep)
            state.near_duplicates += int(is_near.sum())
            keep &= ~is_near
        texts = [t for t, k in zip(result.texts, keep.tolist()) if k]
        state.documents += len(texts)
        state.chars += sum(map(len, texts))
        state.text_bytes += shard.add(texts, None if result.hashes is None else result.hashes[keep],
                                      None if result.bands is None else result.bands[keep])
        state.input_bytes += in_bytes
        state.position = end
        if shard.size >= s.shard_bytes:
            shard.close()
            state.text_shards += 1
            save()
            shard = _TextShard(tmp, state.text_shards)
        progress.update(state.input_bytes, documents=state.documents, mb=round(state.input_bytes / 1e6, 2),
                        duplicates=state.exact_duplicates + state.near_duplicates, shards=state.text_shards)

    try:
        for block in iter_blocks(s.files, s.fmt, s.text_field, s.block_bytes, state.position):
            window.append((block.end, block.in_bytes, pool.submit(process_block, block, bs)))
            del block
            while len(window) >= depth or (window and window[0][2].done()):
                end, in_bytes, future = window.popleft()
                handle(end, in_bytes, future.result())
        while window:
            end, in_bytes, future = window.popleft()
            handle(end, in_bytes, future.result())
    except BaseException:
        shard.discard()
        raise
    if shard.size or len(shard.offsets) > 1:
        shard.close()
        state.text_shards += 1
    else:
        shard.discard()
    state.done = True
    save()
    progress.update(state.input_bytes, force=True, documents=state.documents,
                    mb=round(state.input_bytes / 1e6, 2),
                    duplicates=state.exact_duplicates + state.near_duplicates, shards=state.text_shards)
