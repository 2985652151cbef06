"""From `[data]` / `[task]` / `[model]` config to tokenized train and validation samples.

`prepare_data` is the one entry point the trainer calls. Sample format: a list of token ids that
starts with bos (when the tokenizer has one). A document that fits in `data.chunk_size` tokens
(bos and eos included) is one sample `[bos] + doc + [eos]`. A longer document is cut by
`chunking.chunk_tokens` into overlapping windows of its content; every window starts with bos,
and only the window that ends the document ends with eos (so the model never learns to stop in
the middle of a text). Chunks never exceed `min(data.chunk_size, model.max_seq_len)` tokens.

Samples live in a store on disk (store.py): `PreparedData.train` and `.val` are memory-mapped
`SampleView`s (`len`, `[i]` -> numpy array, `.lengths`), never lists, so any corpus size fits.

Sources:
- `task`: the built-in addition task; tokenizer: `model.tokenizer`, else the model directory's,
  else the task's character vocabulary. No cleaning (the text is synthetic). Small: in-process.
- `files`: streamed by prepare.py with `data.workers` processes: read (readers.py), clean
  (cleaning.py, if `data.clean`), deduplicate (dedup.py, `data.dedup` / `data.near_dedup`),
  split train/val *by document* (seeded by `run.seed`; at least one val document when
  `val_fraction > 0` and there are two or more; a single document is split by chunks instead),
  tokenizer as above or a byte-level BPE trained on the training documents, batched fast
  tokenization, chunking. Interrupted preparations resume from their last complete shard.
Results are cached, keyed by the corpus files (path, size, mtime), the tokenizer and every
setting that changes the samples (not `data.workers` nor `data.shard_mb`); a trained tokenizer
is cached with them. `stats` carries the data report (report.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dswb.engine.data.corpus import cache
from dswb.engine.data.corpus.blocks import BLOCK_BYTES
from dswb.engine.data.corpus.chunking import chunk_tokens
from dswb.engine.data.corpus.prepare import Settings, auto_shard_bytes, prepare_files, resolve_workers
from dswb.engine.data.corpus.report import small_report
from dswb.engine.data.corpus.sources import expand_paths
from dswb.engine.data.corpus.store import Store, open_store
from dswb.engine.data.corpus.store_views import SampleView
from dswb.engine.data.corpus.store_write import StoreWriter
from dswb.engine.data.records.task import AdditionTask, TaskSplits, task_seed
from dswb.engine.data.records.tokenizer import (build_char_tokenizer, encode_batch, has_tokenizer, load_tokenizer,
                                                tokenizer_from_json, tokenizer_identity, tokenizer_json,
                                                train_bpe_tokenizer)
from dswb.errors import UserError

SAMPLE_POLICY = "bos-each-chunk/eos-doc-end/v1"


@dataclass
class PreparedData:
    """Everything the trainer needs from the data side."""

    tokenizer: Any
    train: SampleView
    val: SampleView
    task: AdditionTask | None = None
    task_splits: TaskSplits | None = None
    eval_prompts: list[str] = field(default_factory=list)
    eval_answers: list[str] = field(default_factory=list)
    test_prompts: list[str] = field(default_factory=list)
    test_answers: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    store: Store | None = None

    @property
    def vocab_size(self) -> int:
        """Tokens the model's embedding must cover (`len(tokenizer)`, added tokens included)."""
        return len(self.tokenizer)

    @property
    def report(self) -> dict:
        """The data report (report.py): what was read, dropped, kept and produced."""
        return self.stats.get("report", {})


@dataclass(frozen=True)
class ChunkPlan:
    """Chunk sizes for document *content* (bos/eos excluded) that keep samples within `max_len`."""

    max_len: int
    content: int
    overlap: int
    min_chunk: int


def chunk_plan(chunk_size: int, overlap: int, min_chunk: int, max_seq_len: int, has_bos: bool) -> ChunkPlan:
    max_len = min(chunk_size, max_seq_len)
    content = max(1, max_len - 1 - int(has_bos))
    return ChunkPlan(max_len, content, min(overlap, content - 1), min(min_chunk, content))


def doc_samples(ids: list[int], bos: int | None, eos: int, plan: ChunkPlan) -> list[list[int]]:
    """Samples of one tokenized document under the module's bos/eos policy (pure)."""
    chunks = chunk_tokens(ids, plan.content, plan.overlap, plan.min_chunk)
    head = [bos] if bos is not None else []
    samples = [head + chunk for chunk in chunks]
    if samples:
        samples[-1].append(eos)
    return samples


def tokenize_docs(tokenizer: Any, docs: list[str], batch: int, plan: ChunkPlan) -> list[list[list[int]]]:
    """Per document, its samples; tokenized `batch` documents per fast-tokenizer call."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out = []
    for start in range(0, len(docs), batch):
        for ids in encode_batch(tokenizer, docs[start:start + batch]):
            out.append(doc_samples(ids, bos, eos, plan))
    return out


def split_documents(n_docs: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) document indices, each in corpus order; deterministic for `seed`.

    (prepare.val_documents makes the same choice on an array, for corpora of any size.)
    """
    if val_fraction <= 0 or n_docs < 2:
        return list(range(n_docs)), []
    n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return [i for i in range(n_docs) if i not in val], sorted(val)


def prepare_data(config: Any, cache_root: Path, log: Callable[[str], None] = lambda _: None,
                 progress: Callable[[dict], None] | None = None) -> PreparedData:
    """Tokenized train/val samples (and the task's evaluation sets) for `config`, cached.

    `progress` receives `data_progress` event fields while a file corpus is prepared (see
    prepare.Progress); raising `prepare.PreparationStopped` from it stops, resumably.
    """
    started = time.perf_counter()
    cache_dir = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else Path(cache_root)
    if config.data.source == "task":
        data = _prepare_task(config, cache_dir, log)
    elif config.data.source == "files":
        data = _prepare_files(config, cache_dir, log, progress)
    else:
        raise UserError(f"data.source: unknown source '{config.data.source}' (task or files)")
    if not len(data.train):
        raise UserError(f"data: no training samples from data.source = '{config.data.source}'")
    data.stats["seconds"] = round(time.perf_counter() - started, 3)
    s = data.stats
    log(f"data: {s['documents']} documents, {s['tokens']} tokens -> {s['train_samples']} train / "
        f"{s['val_samples']} val samples, vocab {data.vocab_size}, "
        f"{'cache hit' if s['cache_hit'] else 'tokenized'} in {s['seconds']:.2f}s")
    return data


# -- tokenizer choice ------------------------------------------------------------------------

def _given_tokenizer(config: Any) -> tuple[Any, str] | None:
    """The tokenizer named by `model.tokenizer`, else the model directory's, else None."""
    if config.model.tokenizer:
        return load_tokenizer(config.model.tokenizer, "model.tokenizer"), config.model.tokenizer
    if config.model.path and has_tokenizer(config.model.path):
        return load_tokenizer(config.model.path, "model.path"), config.model.path
    return None


def _bpe_vocab_size(config: Any, log: Callable[[str], None]) -> int:
    """`model.vocab_size`, capped by the vocabulary of the model directory when there is one."""
    size = config.model.vocab_size
    cfg = Path(config.model.path).expanduser() / "config.json" if config.model.path else None
    if cfg is not None and cfg.is_file():
        try:
            model_vocab = int(json.loads(cfg.read_text(encoding="utf-8")).get("vocab_size") or size)
        except (ValueError, OSError):
            model_vocab = size
        if model_vocab < size:
            log(f"data: BPE vocabulary capped at the model's {model_vocab} tokens")
            size = model_vocab
    return size


# -- the built-in task -----------------------------------------------------------------------

def _prepare_task(config: Any, cache_dir: Path, log: Callable[[str], None]) -> PreparedData:
    task = AdditionTask(config.task.digits, task_seed(config), config.task.think)
    splits = task.split(config.task.n_train, config.task.n_val, config.task.n_test)
    given = _given_tokenizer(config)
    tokenizer, tok_name = given if given else (build_char_tokenizer(task.alphabet, task.tags), "task characters")
    plan = chunk_plan(config.data.chunk_size, config.data.chunk_overlap, config.data.min_chunk,
                      config.model.max_seq_len, tokenizer.bos_token_id is not None)
    train_texts, val_texts = task.pretrain_texts(splits.train), task.pretrain_texts(splits.val)
    key_parts = {"source": "task", "train": cache.texts_identity(train_texts),
                 "val": cache.texts_identity(val_texts), "tokenizer": tokenizer_identity(tokenizer),
                 "plan": plan.__dict__, "policy": SAMPLE_POLICY}
    key = cache.cache_key(key_parts)
    final = cache.entry_dir(cache_dir, key)
    store = open_store(final)
    hit = store is not None
    if store is None:
        store = _write_texts(tokenizer, {"train": train_texts, "val": val_texts}, config.data.tokenize_batch, plan,
                             final, {"key_parts": key_parts})
    train, val = store.split("train"), store.split("val")
    lengths = store.lengths
    texts = train_texts + val_texts
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    report = small_report(len(texts), sum(map(len, texts)), text_bytes,
                          np.asarray(store.meta.get("doc_tokens", []), dtype=np.int64), lengths, len(train), len(val),
                          train.n_tokens)
    report["val_documents"], report["train_documents"] = len(val_texts), len(train_texts)
    stats = {"documents": len(texts), "skipped_lines": 0, "chars": report["chars"],
             "tokens": int(lengths.sum(dtype=np.int64)), "train_samples": len(train), "val_samples": len(val),
             "cache_hit": hit, "tokenizer": tok_name, "cache_key": key, "report": report}
    return PreparedData(tokenizer=tokenizer, train=train, val=val, task=task, task_splits=splits,
                        eval_prompts=[e.prompt for e in splits.val], eval_answers=[e.answer for e in splits.val],
                        test_prompts=[e.prompt for e in splits.test], test_answers=[e.answer for e in splits.test],
                        stats=stats, store=store)


def _write_texts(tokenizer: Any, splits: dict[str, list[str]], batch: int, plan: ChunkPlan, final: Path,
                 meta: dict) -> Store:
    """Tokenize in-memory texts (small data) into a new store, one split after the other."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = StoreWriter(tmp)
    bounds, doc_tokens = {}, []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    try:
        for name, texts in splits.items():
            first = writer.n_samples
            for start in range(0, len(texts), batch):
                for ids in encode_batch(tokenizer, texts[start:start + batch]):
                    doc_tokens.append(len(ids))
                    for sample in doc_samples(ids, bos, eos, plan):
                        writer.add(sample)
                    writer.end_document()
            bounds[name] = np.arange(first, writer.n_samples)
        return writer.commit(final, bounds, {**meta, "doc_tokens": doc_tokens})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- files -----------------------------------------------------------------------------------

def _describe(json_text: str) -> tuple[str, int | None, int, int]:
    tok = tokenizer_from_json(json_text)
    return json_text, tok.bos_token_id, tok.eos_token_id, len(tok)


def _prepare_files(config: Any, cache_dir: Path, log: Callable[[str], None],
                   progress: Callable[[dict], None] | None) -> PreparedData:
    d = config.data
    files = expand_paths(d.paths)
    given = _given_tokenizer(config)
    if given:
        tokenizer, tok_name = given
        tok_part: Any = tokenizer_identity(tokenizer)
        if getattr(tokenizer, "backend_tokenizer", None) is None:
            raise UserError(f"model.tokenizer: {tok_name} has no fast tokenizer (tokenizer.json), which data "
                            "preparation needs")
        info = (tokenizer_json(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer))
        has_bos = tokenizer.bos_token_id is not None
    else:
        tokenizer, tok_name, info = None, "byte-level BPE trained on the corpus", None
        tok_part = {"train_bpe": _bpe_vocab_size(config, log), "max_chars": d.tokenizer_train_chars}
        has_bos = True
    plan = chunk_plan(d.chunk_size, d.chunk_overlap, d.min_chunk, config.model.max_seq_len, has_bos)
    if d.chunk_size > config.model.max_seq_len:
        log(f"data: chunks limited to model.max_seq_len = {config.model.max_seq_len} tokens")
    near = (d.near_dedup_threshold, d.near_dedup_perm) if d.near_dedup else None
    key_parts = {"source": "files", "files": [cache.file_identity(f) for f in files], "format": d.format,
                 "text_field": d.text_field, "bad_lines": d.bad_lines,
                 "clean": [d.strip_html, d.strip_urls, d.strip_special] if d.clean else False,
                 "dedup": d.dedup, "near_dedup": list(near) if near else False,
                 "val_fraction": d.val_fraction, "seed": config.run.seed, "tokenizer": tok_part,
                 "plan": plan.__dict__, "policy": SAMPLE_POLICY}
    key = cache.cache_key(key_parts)
    input_bytes = sum(f.stat().st_size for f in files)
    workers = resolve_workers(d.workers, input_bytes)
    shard_bytes = auto_shard_bytes(d.shard_mb, input_bytes, workers)
    settings = Settings(paths=list(d.paths), files=files, fmt=d.format, text_field=d.text_field,
                        bad_lines=d.bad_lines, clean=(d.strip_html, d.strip_urls, d.strip_special) if d.clean else None,
                        dedup=d.dedup, near=near, workers=workers, shard_bytes=shard_bytes,
                        block_bytes=min(BLOCK_BYTES, shard_bytes), val_fraction=d.val_fraction, seed=config.run.seed,
                        content=plan.content, overlap=plan.overlap, min_chunk=plan.min_chunk,
                        tokenize_batch=d.tokenize_batch, tokenizer_train_chars=d.tokenizer_train_chars)
    bpe_size = None if given else tok_part["train_bpe"]

    def train(texts) -> str:
        log(f"data: training a byte-level BPE ({bpe_size} tokens) on the training documents")
        return tokenizer_json(train_bpe_tokenizer(texts, bpe_size))

    store, hit = prepare_files(settings, cache_dir, key, key_parts, info, train, _describe, log, progress,
                               {"tokenizer_name": tok_name})
    if tokenizer is None:
        tokenizer = tokenizer_from_json(store.file("tokenizer.json").read_text(encoding="utf-8"))
        if not hit:
            log(f"data: trained a byte-level BPE with {len(tokenizer)} tokens")
    report = dict(store.meta["report"])
    stats = {"documents": report["documents"], "skipped_lines": report["bad_records"], "chars": report["chars"],
             "tokens": report["tokens"], "train_samples": report["train_samples"],
             "val_samples": report["val_samples"], "cache_hit": hit, "tokenizer": tok_name, "files": len(files),
             "dropped_empty": report["cleaned_away"], "duplicates": report["exact_duplicates"] + report["near_duplicates"],
             "cache_key": key, "report": report}
    return PreparedData(tokenizer=tokenizer, train=store.split("train"), val=store.split("val"), stats=stats,
                        store=store)
