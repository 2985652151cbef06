"""The data side of the engine: read -> clean -> tokenize -> chunk -> cache, and the built-in task.

Modules: `readers` (text/JSONL files), `cleaning` (regex rules), `tokenizer` (BPE training, the
task's character vocabulary, loading), `chunking` (overlapping windows), `cache` (tokenized
samples on disk), `task` (the addition task), `pipeline` (`prepare_data`, what the trainer calls).

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
    "AdditionTask": "task", "TaskSplits": "task", "score": "task",
    "PreparedData": "pipeline", "prepare_data": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dswb.engine.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dswb.engine.data' has no attribute '{name}'")
