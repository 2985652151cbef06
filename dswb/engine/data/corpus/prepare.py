"""Streaming, parallel, resumable preparation of a file corpus into a sample store.

Phases, all with bounded memory (a few blocks and one shard at a time, plus 8 bytes per kept
document for exact dedup and 8 x bands for near-dup):
1. read (ingest.py): the main process reads blocks of records (readers.iter_blocks) and hands them to
   `data.workers` processes that parse, clean and hash them (work.process_block); results come
   back in corpus order, duplicates are dropped (dedup.py), and the kept texts are appended to
   text shards of about `data.shard_mb`. After each text shard, `progress.json` records the input
   position and the counters.
2. tokenizer: when none is given, a byte-level BPE is trained on the training documents (the
   split by document is known once the documents are counted), at most
   `data.tokenizer_train_chars` characters of them.
3. tokenize: workers turn each text shard into a token shard (work.tokenize_shard), each marked
   complete by its `.done.json`.
4. finalize: the train/val split by document (as `split_documents` always did), the data
   report, `meta.json`; text shards are deleted and the directory renamed into place.
Everything happens in `<cache_dir>/.tmp-<key>/` under a lock file, so an interrupted preparation
(Ctrl-C, kill, crash, full disk) resumes from its last complete shard when run again, and the
store appears only when complete. Results do not depend on `data.workers` or `data.shard_mb`.
The bookkeeping (progress events, `progress.json`) is progress.py; the worker pool and the lock
are pool.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from dswb.engine.data.corpus.ingest import ReadState, read_phase
from dswb.engine.data.corpus.pool import executor, locked
from dswb.engine.data.corpus.progress import Progress, clear_after, load_state, save_state
from dswb.engine.data.corpus.readers import no_documents_message
from dswb.engine.data.corpus.report import build_report
from dswb.engine.data.corpus.sources import file_size
from dswb.engine.data.corpus.store import Store, open_store
from dswb.engine.data.corpus.store_views import index_dtype
from dswb.engine.data.corpus.store_write import commit, save_array, write_meta
from dswb.engine.data.corpus.work import TokenizeSettings, read_text_shard, shard_texts, tokenize_shard
from dswb.errors import UserError
from dswb.util.atomic import write_atomic


class PreparationStopped(Exception):
    """Raised by a progress callback to stop; the preparation resumes from its last shard."""


@dataclass
class Settings:
    """What the preparation of a file corpus needs (built from `[data]` by pipeline.py)."""

    paths: list[str]
    files: list[Path]
    fmt: str = "auto"
    text_field: str = "text"
    bad_lines: str = "error"
    clean: tuple[bool, bool, bool] | None = (True, True, True)
    dedup: bool = True
    near: tuple[float, int] | None = None
    workers: int = 1
    shard_bytes: int = 64 << 20
    block_bytes: int = 1 << 20
    val_fraction: float = 0.05
    seed: int = 0
    content: int = 510
    overlap: int = 50
    min_chunk: int = 256
    tokenize_batch: int = 1000
    tokenizer_train_chars: int = 200_000_000


SMALL_INPUT_BYTES = 8 << 20


MAX_AUTO_SHARD_BYTES = 64 << 20
MIN_AUTO_SHARD_BYTES = 256 << 10


def auto_shard_bytes(shard_mb: float, input_bytes: int, workers: int) -> int:
    """`data.shard_mb` in bytes; 0 means about 4 shards per worker, within [256 KB, 64 MB]."""
    if shard_mb > 0:
        return max(1, int(shard_mb * 1e6))
    return int(min(MAX_AUTO_SHARD_BYTES, max(MIN_AUTO_SHARD_BYTES, input_bytes / (4 * max(1, workers)))))


def resolve_workers(n: int, input_bytes: int | None = None) -> int:
    """`data.workers`: 0 means every core this process may use, or 1 (no worker processes to
    start) for an input under `SMALL_INPUT_BYTES`."""
    if n > 0:
        return n
    if input_bytes is not None and input_bytes < SMALL_INPUT_BYTES:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# -- the split by document -------------------------------------------------------------------

def val_documents(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the validation documents: exactly `pipeline.split_documents`'s choice
    (the same `random.Random(seed).shuffle`), on an 8-byte array instead of a list of ints."""
    if val_fraction <= 0 or n_docs < 2:
        return np.zeros(0, dtype=np.int64)
    n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    order = array("q", range(n_docs))
    random.Random(seed).shuffle(order)
    return np.sort(np.frombuffer(order, dtype=np.int64)[:n_val])


def split_samples(samples_per_doc: np.ndarray, val_docs: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) global sample indices: samples of validation documents go to val, in corpus
    order; a single document instead holds out its last `val_fraction` of samples."""
    n = int(samples_per_doc.sum(dtype=np.int64))
    if len(samples_per_doc) == 1 and val_fraction > 0 and n >= 2:
        n_val = max(1, round(n * val_fraction))
        return np.arange(n - n_val), np.arange(n - n_val, n)
    is_val_doc = np.zeros(len(samples_per_doc), dtype=bool)
    is_val_doc[val_docs] = True
    is_val = np.repeat(is_val_doc, samples_per_doc)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# -- the tokenizer and tokenize phases -------------------------------------------------------

def train_texts(tmp: Path, n_shards: int, val_docs: np.ndarray, max_chars: int) -> Iterator[str]:
    """The training documents of the text shards, in order, until `max_chars` characters."""
    val = set(val_docs.tolist()) if len(val_docs) <= 1_000_000 else None
    val_mask = None
    if val is None:
        val_mask = np.zeros(int(val_docs[-1]) + 1, dtype=bool)
        val_mask[val_docs] = True
    doc, chars = 0, 0
    for k in range(n_shards):
        data, offsets = read_text_shard(tmp, k)
        for lo in range(0, len(offsets) - 1, 1000):
            hi = min(lo + 1000, len(offsets) - 1)
            for text in shard_texts(data, offsets, lo, hi):
                is_val = (doc in val) if val is not None else (doc < len(val_mask) and val_mask[doc])
                doc += 1
                if is_val:
                    continue
                yield text
                chars += len(text)
                if chars >= max_chars:
                    return


def _tokenize_phase(tmp: Path, n_shards: int, ts: TokenizeSettings, pool, progress: Progress) -> None:
    pending = [k for k in range(n_shards) if not (tmp / f"s{k:05d}.done.json").exists()]
    sizes = {k: (tmp / f"text-{k:05d}.bin").stat().st_size for k in range(n_shards)}
    done_bytes = sum(v for k, v in sizes.items() if k not in pending)
    documents = tokens = 0
    progress.total = max(sum(sizes.values()), 1)
    futures = [(k, pool.submit(tokenize_shard, tmp, k, ts)) for k in pending]
    for k, future in futures:
        result = future.result()
        done_bytes += sizes[k]
        documents += result["docs"]
        tokens += result["tokens"]
        progress.update(done_bytes, documents=documents, mb=round(done_bytes / 1e6, 2), tokens=tokens)
    progress.update(progress.total, force=True, documents=documents, mb=round(done_bytes / 1e6, 2), tokens=tokens)


# -- the whole preparation -------------------------------------------------------------------

TokenizerInfo = tuple[str, "int | None", int, int]
"""(tokenizer.json text, bos id or None, eos id, vocabulary size)."""


def prepare_files(s: Settings, cache_dir: Path, key: str, key_parts: dict, tokenizer: TokenizerInfo | None,
                  train_tokenizer: Callable[[Iterator[str]], str], describe: Callable[[str], TokenizerInfo],
                  log: Callable[[str], None], progress: Callable[[dict], None] | None = None,
                  extra_meta: dict | None = None) -> tuple[Store, bool]:
    """Prepare (or reuse) the store of a file corpus; returns (store, cache hit).

    `tokenizer` describes a given tokenizer; without one, `train_tokenizer(texts)` trains one on
    the training documents and returns its tokenizer.json text (kept in the store), which
    `describe` turns into a `TokenizerInfo`. `progress` receives progress events; it may raise
    `PreparationStopped` (or anything) to stop, and the next call resumes.
    """
    from dswb.engine.data.corpus.cache import entry_dir

    final = entry_dir(cache_dir, key)
    found = open_store(final)
    if found is not None:
        return found, True
    tmp = Path(cache_dir) / f".tmp-{key}"
    with locked(Path(cache_dir) / f".tmp-{key}.lock", log):
        found = open_store(final)
        if found is not None:
            return found, True
        loaded = load_state(tmp, key)
        if loaded is None:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            state, saved = ReadState(), {}
        else:
            state, saved = loaded
            state.resumed_shards = state.text_shards
            log(f"data: resuming an interrupted preparation ({state.text_shards} text shards, "
                f"{state.documents} documents kept so far)")
        clear_after(tmp, state.text_shards)
        try:
            store = _run(s, tmp, final, key, key_parts, state, saved, tokenizer, train_tokenizer, describe, log,
                         progress, extra_meta or {})
        except UserError:  # the same input would fail the same way: nothing worth resuming
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return store, False


def _run(s: Settings, tmp: Path, final: Path, key: str, key_parts: dict, state: ReadState, saved: dict,
         tokenizer, train_tokenizer, describe, log, progress, extra_meta: dict) -> Store:
    timings = dict(saved.get("timings", {}))

    def save() -> None:
        save_state(tmp, key, state, {"timings": timings})

    with executor(s.workers) as pool:
        if not state.done:
            started = time.perf_counter()
            read_phase(s, tmp, state, pool, save, Progress(progress, "read", sum(file_size(f) for f in s.files)))
            timings["read_s"] = round(timings.get("read_s", 0) + time.perf_counter() - started, 3)
            save()
        if state.documents == 0:
            raise UserError(no_documents_message(s.paths, state.bad) if state.records == state.empty + state.bad
                            else f"no text left after cleaning the documents in {', '.join(s.paths)}")
        log(f"data: {state.records} records read, {state.documents} documents kept "
            f"({state.cleaned_away} cleaned away, {state.exact_duplicates} exact and {state.near_duplicates} "
            f"near duplicates, {state.bad} bad records skipped)")
        val_docs = val_documents(state.documents, s.val_fraction, s.seed)
        trained = False
        if tokenizer is None:
            if not (tmp / "tokenizer.json").exists():
                started = time.perf_counter()
                if progress:
                    progress({"phase": "tokenizer", "fraction": 0.0, "elapsed_s": 0.0, "eta_s": None})
                json_text = train_tokenizer(train_texts(tmp, state.text_shards, val_docs, s.tokenizer_train_chars))
                write_atomic(tmp / "tokenizer.json", json_text, fsync=False, tmp_name="tokenizer.json.part")
                timings["tokenizer_s"] = round(time.perf_counter() - started, 3)
                save()
            tokenizer = describe((tmp / "tokenizer.json").read_text(encoding="utf-8"))
            trained = True
        json_text, bos, eos, vocab = tokenizer
        work_tok = tmp / "work-tokenizer.json"
        if not work_tok.exists() or work_tok.read_text(encoding="utf-8") != json_text:
            work_tok.write_text(json_text, encoding="utf-8")
        ts = TokenizeSettings(str(work_tok), bos, eos, s.content, s.overlap, s.min_chunk, s.tokenize_batch, vocab)
        started = time.perf_counter()
        _tokenize_phase(tmp, state.text_shards, ts, pool, Progress(progress, "tokenize", 1))
        timings["tokenize_s"] = round(timings.get("tokenize_s", 0) + time.perf_counter() - started, 3)
    return _finalize(s, tmp, final, state, val_docs, key_parts, timings, trained, extra_meta)


def _finalize(s: Settings, tmp: Path, final: Path, state: ReadState, val_docs: np.ndarray, key_parts: dict,
              timings: dict, trained: bool, extra_meta: dict) -> Store:
    shards, per_doc_parts, doctok_parts = [], [], []
    for k in range(state.text_shards):
        shards.append(json.loads((tmp / f"s{k:05d}.done.json").read_text(encoding="utf-8")))
        per_doc_parts.append(np.load(tmp / f"s{k:05d}.docs.npy", allow_pickle=False))
        doctok_parts.append(np.load(tmp / f"s{k:05d}.doctok.npy", allow_pickle=False))
    per_doc = np.concatenate(per_doc_parts)
    doc_tokens = np.concatenate(doctok_parts)
    train, val = split_samples(per_doc, val_docs, s.val_fraction)
    if not len(train):
        raise UserError(f"no training samples from {', '.join(s.paths)} (documents tokenize to nothing)")
    n_samples = int(per_doc.sum(dtype=np.int64))
    for name, index in (("train", train), ("val", val)):
        save_array(tmp / f"{name}.index.npy", index.astype(index_dtype(n_samples)))
    for path in list(tmp.glob("text-*")) + list(tmp.glob("*.done.json")) + [tmp / "progress.json", tmp / "work-tokenizer.json"]:
        path.unlink(missing_ok=True)
    table = [{"name": sh["name"], "samples": sh["samples"], "tokens": sh["tokens"], "masks": False} for sh in shards]
    meta = {"key_parts": key_parts, "shards": table, "splits": {"train": len(train), "val": len(val)},
            "samples": n_samples, "tokenizer_trained": trained, **extra_meta}
    write_meta(tmp, meta)
    opened = Store(tmp)
    report = build_report(state, opened, per_doc, doc_tokens, train, val, len(val_docs), s, timings)
    meta["report"] = report
    write_meta(tmp, meta)
    return Store(commit(tmp, final))
