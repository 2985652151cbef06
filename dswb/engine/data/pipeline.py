"""From `[data]` / `[task]` / `[model]` config to tokenized train and validation samples.

`prepare_data` is the one entry point the trainer calls. Sample format: a list of token ids that
starts with bos (when the tokenizer has one). A document that fits in `data.chunk_size` tokens
(bos and eos included) is one sample `[bos] + doc + [eos]`. A longer document is cut by
`chunking.chunk_tokens` into overlapping windows of its content; every window starts with bos,
and only the window that ends the document ends with eos (so the model never learns to stop in
the middle of a text). Chunks never exceed `min(data.chunk_size, model.max_seq_len)` tokens.

Sources:
- `task`: the built-in addition task; tokenizer: `model.tokenizer`, else the model directory's,
  else the task's character vocabulary. No cleaning (the text is synthetic).
- `files`: read (readers.py), clean (cleaning.py, if `data.clean`), split train/val *by document*
  (seeded by `run.seed`; at least one val document when `val_fraction > 0` and there are two or
  more; a single document is split by chunks instead), tokenizer as above or a byte-level BPE
  trained on the training documents, batched fast tokenization, chunking.
Results are cached (cache.py), keyed by the corpus files (path, size, mtime), the tokenizer and
every setting that changes the samples; a trained tokenizer is cached with them.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dswb.engine.data import cache
from dswb.engine.data.chunking import chunk_tokens
from dswb.engine.data.cleaning import clean_batch, make_cleaner
from dswb.engine.data.readers import expand_paths, read_documents
from dswb.engine.data.task import AdditionTask, TaskSplits
from dswb.engine.data.tokenizer import (build_char_tokenizer, encode_batch, has_tokenizer, load_tokenizer,
                                        tokenizer_from_json, tokenizer_identity, tokenizer_json,
                                        train_bpe_tokenizer)
from dswb.errors import UserError

SAMPLE_POLICY = "bos-each-chunk/eos-doc-end/v1"


@dataclass
class PreparedData:
    """Everything the trainer needs from the data side."""

    tokenizer: Any
    train: list[list[int]]
    val: list[list[int]]
    task: AdditionTask | None = None
    task_splits: TaskSplits | None = None
    eval_prompts: list[str] = field(default_factory=list)
    eval_answers: list[str] = field(default_factory=list)
    test_prompts: list[str] = field(default_factory=list)
    test_answers: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Tokens the model's embedding must cover (`len(tokenizer)`, added tokens included)."""
        return len(self.tokenizer)


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
    """(train, val) document indices, each in corpus order; deterministic for `seed`."""
    if val_fraction <= 0 or n_docs < 2:
        return list(range(n_docs)), []
    n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return [i for i in range(n_docs) if i not in val], sorted(val)


def prepare_data(config: Any, cache_root: Path, log: Callable[[str], None] = lambda _: None) -> PreparedData:
    """Tokenized train/val samples (and the task's evaluation sets) for `config`, cached."""
    started = time.perf_counter()
    cache_dir = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else Path(cache_root)
    if config.data.source == "task":
        data = _prepare_task(config, cache_dir, log)
    elif config.data.source == "files":
        data = _prepare_files(config, cache_dir, log)
    else:
        raise UserError(f"data.source: unknown source '{config.data.source}' (task or files)")
    if not data.train:
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
    task = AdditionTask(config.task.digits, config.run.seed)
    splits = task.split(config.task.n_train, config.task.n_val, config.task.n_test)
    given = _given_tokenizer(config)
    tokenizer, tok_name = given if given else (build_char_tokenizer(task.alphabet), "task characters")
    plan = chunk_plan(config.data.chunk_size, config.data.chunk_overlap, config.data.min_chunk,
                      config.model.max_seq_len, tokenizer.bos_token_id is not None)
    train_texts, val_texts = task.pretrain_texts(splits.train), task.pretrain_texts(splits.val)
    key_parts = {"source": "task", "train": cache.texts_identity(train_texts),
                 "val": cache.texts_identity(val_texts), "tokenizer": tokenizer_identity(tokenizer),
                 "plan": plan.__dict__, "policy": SAMPLE_POLICY}
    key = cache.cache_key(key_parts)
    entry = cache.load_entry(cache_dir, key)
    if entry is not None:
        train, val = entry.splits["train"], entry.splits["val"]
    else:
        batch = config.data.tokenize_batch
        train = [s for doc in tokenize_docs(tokenizer, train_texts, batch, plan) for s in doc]
        val = [s for doc in tokenize_docs(tokenizer, val_texts, batch, plan) for s in doc]
        cache.save_entry(cache_dir, key, {"train": train, "val": val}, meta={"key_parts": key_parts})
    stats = {"documents": len(train_texts) + len(val_texts), "skipped_lines": 0,
             "chars": sum(map(len, train_texts)) + sum(map(len, val_texts)),
             "tokens": sum(map(len, train)) + sum(map(len, val)), "train_samples": len(train),
             "val_samples": len(val), "cache_hit": entry is not None, "tokenizer": tok_name, "cache_key": key}
    return PreparedData(tokenizer=tokenizer, train=train, val=val, task=task, task_splits=splits,
                        eval_prompts=[e.prompt for e in splits.val], eval_answers=[e.answer for e in splits.val],
                        test_prompts=[e.prompt for e in splits.test], test_answers=[e.answer for e in splits.test],
                        stats=stats)


# -- files -----------------------------------------------------------------------------------

def _prepare_files(config: Any, cache_dir: Path, log: Callable[[str], None]) -> PreparedData:
    d = config.data
    files = expand_paths(d.paths)
    given = _given_tokenizer(config)
    if given:
        tokenizer, tok_name = given
        tok_part: Any = tokenizer_identity(tokenizer)
        has_bos = tokenizer.bos_token_id is not None
    else:
        tokenizer, tok_name = None, "byte-level BPE trained on the corpus"
        tok_part = {"train_bpe": _bpe_vocab_size(config, log)}
        has_bos = True
    plan = chunk_plan(d.chunk_size, d.chunk_overlap, d.min_chunk, config.model.max_seq_len, has_bos)
    if d.chunk_size > config.model.max_seq_len:
        log(f"data: chunks limited to model.max_seq_len = {config.model.max_seq_len} tokens")
    key_parts = {"source": "files", "files": [cache.file_identity(f) for f in files], "format": d.format,
                 "text_field": d.text_field, "bad_lines": d.bad_lines,
                 "clean": [d.strip_html, d.strip_urls, d.strip_special] if d.clean else False,
                 "val_fraction": d.val_fraction, "seed": config.run.seed, "tokenizer": tok_part,
                 "plan": plan.__dict__, "policy": SAMPLE_POLICY}
    key = cache.cache_key(key_parts)
    entry = cache.load_entry(cache_dir, key)
    if entry is not None:
        if tokenizer is None:
            tokenizer = tokenizer_from_json(entry.file("tokenizer.json").read_text(encoding="utf-8"))
        stats = {**entry.meta["stats"], "cache_hit": True}
        return PreparedData(tokenizer=tokenizer, train=entry.splits["train"], val=entry.splits["val"], stats=stats)

    read = read_documents(d.paths, d.format, d.text_field, d.bad_lines)
    log(f"data: read {len(read.docs)} documents from {len(read.files)} files"
        + (f" ({read.skipped} malformed lines skipped, e.g. {read.skipped_examples[0]})" if read.skipped else ""))
    docs = read.docs
    if d.clean:
        docs = [doc for doc in clean_batch(docs, make_cleaner(d.strip_html, d.strip_urls, d.strip_special)) if doc]
        if not docs:
            raise UserError(f"no text left after cleaning the documents in {', '.join(d.paths)}")
    train_idx, val_idx = split_documents(len(docs), d.val_fraction, config.run.seed)
    if tokenizer is None:
        tokenizer = train_bpe_tokenizer((docs[i] for i in train_idx), tok_part["train_bpe"])
        log(f"data: trained a byte-level BPE with {len(tokenizer)} tokens")
    per_doc = tokenize_docs(tokenizer, docs, d.tokenize_batch, plan)
    train = [s for i in train_idx for s in per_doc[i]]
    val = [s for i in val_idx for s in per_doc[i]]
    if len(docs) == 1 and d.val_fraction > 0 and len(train) >= 2:  # one document: hold out its last chunks
        n_val = max(1, round(len(train) * d.val_fraction))
        train, val = train[:-n_val], train[-n_val:]
    if not train:
        raise UserError(f"no training samples from {', '.join(d.paths)} (documents tokenize to nothing)")
    stats = {"documents": len(docs), "skipped_lines": read.skipped, "chars": sum(map(len, docs)),
             "tokens": sum(len(s) for doc in per_doc for s in doc), "train_samples": len(train),
             "val_samples": len(val), "cache_hit": False, "tokenizer": tok_name, "files": len(read.files),
             "dropped_empty": len(read.docs) - len(docs), "cache_key": key}
    extra = {} if given else {"tokenizer.json": tokenizer_json(tokenizer)}
    cache.save_entry(cache_dir, key, {"train": train, "val": val}, meta={"key_parts": key_parts, "stats": stats},
                     files=extra)
    return PreparedData(tokenizer=tokenizer, train=train, val=val, stats=stats)
