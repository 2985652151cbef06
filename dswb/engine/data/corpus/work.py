"""What preparation workers do: clean and hash a block of records; tokenize and chunk a text shard.

These functions run in worker processes (started with `spawn`) or in the main process when
`data.workers = 1`, with identical results. Imports stay light (numpy, regex, tokenizers): no
torch, no transformers. Workers ignore SIGINT; the main process decides when to stop.

Text shard `text-NNNNN` (written by the main process in the read phase): `.bin` (the kept,
cleaned documents' UTF-8 concatenated), `.idx.npy` (int64 byte offsets, n+1), `.hash.npy`
(uint64 content hashes), `.bands.npy` (uint64 LSH band keys, near-dup only).
Token shard `sNNNNN` (written here): the store's shard files (store.py; written by store_write.py)
with `.docs.npy`, plus `.doctok.npy` (content tokens per document, for the report) and
`.done.json` last, which marks the shard complete for a resumed preparation.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dswb.engine.data.corpus.blocks import Block, parse_block
from dswb.engine.data.corpus.chunking import chunk_spans
from dswb.engine.data.corpus.cleaning import make_cleaner
from dswb.engine.data.corpus.dedup import NearDup, content_hashes
from dswb.engine.data.corpus.store_write import token_dtype, write_shard
from dswb.util.atomic import write_json_atomic

_CACHE: dict = {}


def init_worker() -> None:
    """Pool initializer: leave Ctrl-C to the main process; one thread of tokenizers per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


@dataclass(frozen=True)
class BlockSettings:
    text_field: str = "text"
    stop_at_bad: bool = True
    clean: tuple[bool, bool, bool] | None = (True, True, True)   # strip_html, strip_urls, strip_special
    dedup: bool = True
    near: tuple[float, int] | None = None                        # (threshold, num_perm)


@dataclass
class BlockResult:
    texts: list[str]
    hashes: np.ndarray | None
    bands: np.ndarray | None
    records: int = 0
    empty: int = 0
    cleaned_away: int = 0
    bad: list[str] | None = None
    fatal: str | None = None


def _cached(key, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def process_block(block: Block, settings: BlockSettings) -> BlockResult:
    """Parse, clean (dropping documents that clean to nothing) and hash one block."""
    parsed = parse_block(block, settings.text_field, settings.stop_at_bad)
    texts = parsed.texts
    cleaned_away = 0
    if settings.clean is not None:
        cleaner = _cached(("clean", settings.clean), lambda: make_cleaner(*settings.clean))
        cleaned = [cleaner(t) for t in texts]
        texts = [t for t in cleaned if t]
        cleaned_away = len(cleaned) - len(texts)
    hashes = content_hashes(texts) if settings.dedup or settings.near else None
    bands = None
    if settings.near is not None:
        near = _cached(("near", settings.near), lambda: NearDup(*settings.near))
        bands = (np.stack([near.keys(t) for t in texts]) if texts
                 else np.zeros((0, near.bands), dtype=np.uint64))
    return BlockResult(texts, hashes, bands, parsed.records, parsed.empty, cleaned_away, parsed.bad, parsed.fatal)


# -- tokenizing a text shard -----------------------------------------------------------------

@dataclass(frozen=True)
class TokenizeSettings:
    tokenizer_file: str            # a tokenizer.json (the `tokenizers` library's format)
    bos: int | None
    eos: int
    content: int                   # chunk plan (see pipeline.chunk_plan)
    overlap: int
    min_chunk: int
    batch: int = 1000              # documents per fast-tokenizer call
    vocab: int = 1 << 16           # decides the token dtype


def _tokenizer(path: str):
    def load():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(path)
        tok.no_truncation()
        tok.no_padding()
        return tok
    return _cached(("tok", path, os.stat(path).st_mtime_ns), load)


def read_text_shard(directory: Path, k: int) -> tuple[bytes, np.ndarray]:
    """(UTF-8 bytes, offsets) of text shard k."""
    data = (directory / f"text-{k:05d}.bin").read_bytes()
    offsets = np.load(directory / f"text-{k:05d}.idx.npy", allow_pickle=False)
    return data, offsets


def shard_texts(data: bytes, offsets: np.ndarray, lo: int, hi: int) -> list[str]:
    bounds = offsets[lo:hi + 1].tolist()
    return [data[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]


def doc_pieces(ids: list[int], s: TokenizeSettings, dtype) -> tuple[list[np.ndarray], list[int]]:
    """The samples of one document as array pieces and their lengths (pipeline's bos/eos policy)."""
    spans = chunk_spans(len(ids), s.content, s.overlap, s.min_chunk)
    if not spans:
        return [], []
    arr = np.asarray(ids, dtype=dtype)
    head = [np.array([s.bos], dtype=dtype)] if s.bos is not None else []
    pieces, lengths = [], []
    for n, (a, b) in enumerate(spans):
        pieces.extend(head)
        pieces.append(arr[a:b])
        length = len(head) + b - a
        if n == len(spans) - 1:
            pieces.append(np.array([s.eos], dtype=dtype))
            length += 1
        lengths.append(length)
    return pieces, lengths


def tokenize_shard(directory: Path, k: int, settings: TokenizeSettings) -> dict:
    """Tokenize and chunk text shard k into token shard `s{k:05d}`; returns its totals."""
    directory = Path(directory)
    data, offsets = read_text_shard(directory, k)
    tok = _tokenizer(settings.tokenizer_file)
    dtype = token_dtype(max(settings.vocab - 1, 0))
    n_docs = len(offsets) - 1
    parts: list[np.ndarray] = []
    sample_lengths: list[int] = []
    per_doc = np.zeros(n_docs, dtype=np.int32)
    doc_tokens = np.zeros(n_docs, dtype=np.int32)
    for lo in range(0, n_docs, settings.batch):
        hi = min(lo + settings.batch, n_docs)
        encodings = tok.encode_batch_fast(shard_texts(data, offsets, lo, hi), add_special_tokens=False)
        batch_pieces = []
        for j, enc in enumerate(encodings, start=lo):
            ids = enc.ids
            pieces, lengths = doc_pieces(ids, settings, dtype)
            batch_pieces.extend(pieces)
            sample_lengths.extend(lengths)
            per_doc[j] = len(lengths)
            doc_tokens[j] = len(ids)
        if batch_pieces:
            parts.append(np.concatenate(batch_pieces))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    sample_offsets = np.zeros(len(sample_lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(sample_lengths, dtype=np.int64), out=sample_offsets[1:])
    name = f"s{k:05d}"
    entry = write_shard(directory, name, tokens, sample_offsets, per_doc)
    np.save(directory / f"{name}.doctok.npy", doc_tokens, allow_pickle=False)
    done = {**entry, "docs": n_docs, "doc_tokens": int(doc_tokens.sum(dtype=np.int64)), "text_bytes": len(data)}
    write_json_atomic(directory / f"{name}.done.json", done, fsync=False, tmp_name=f"{name}.done.json.part")
    return done
