"""The data side of the engine: read -> clean -> dedup -> tokenize -> chunk -> store, and the built-in task.

Modules: `readers` (text, JSONL, compressed, Parquet, `datasets` directories, as resumable
blocks), `cleaning` (regex rules), `dedup` (exact hashes, MinHash/LSH), `tokenizer` (BPE
training, the task's character vocabulary, loading), `chunking` (overlapping windows), `work`
(what worker processes do), `prepare` (streaming, parallel, resumable preparation of a file
corpus), `store` (samples on disk, memory-mapped views), `report` (the data report), `events`
(progress and report events), `cache` (cache keys), `task` (the addition task), `pipeline`
(`prepare_data`, what the trainer calls). See docs/data.md.

Names are re-exported lazily so that importing a light module (readers, chunking, task) does
not pull in transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReadResult": "readers", "read_documents": "readers",
    "make_cleaner": "cleaning", "clean_batch": "cleaning",
    "chunk_tokens": "chunking",
    "train_bpe_tokenizer": "tokenizer", "build_char_tokenizer": "tokenizer", "load_tokenizer": "tokenizer",
    "load_or_build": "cache",
    "SampleView": "store", "Store": "store", "open_store": "store", "write_samples": "store", "load_or_write": "store",
    "PreparationStopped": "prepare", "format_report": "report",
    "AdditionTask": "task", "TaskSplits": "task", "score": "task",
    "PreparedData": "pipeline", "prepare_data": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dswb.engine.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dswb.engine.data' has no attribute '{name}'")
