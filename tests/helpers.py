"""Test helpers: tiny configs, in-process runs of the real engine, sample stores built from lists."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from dswb.config import load_config
from dswb.engine.data.corpus.store import Store
from dswb.engine.data.corpus.store_write import SHARD_TOKENS, StoreWriter

TINY = [
    "model.size=tiny", "model.max_seq_len=32", "data.source=task", "task.n_train=600", "task.n_val=40",
    "task.n_test=40", "batching.max_tokens=512", "train.steps=12", "train.warmup_steps=2", "train.lr=1e-3",
    "eval.every=0", "eval.max_batches=2", "eval.task_samples=8", "checkpoint.every=4", "checkpoint.keep_last=2",
    "run.threads=1", "monitor.system_every_s=0.2",
]


def tiny_config(*extra: str):
    return load_config(None, TINY + list(extra))


def run_in_process(config, run_dir: Path, resume: bool = False, reporter=None) -> int:
    from dswb.engine.runner import run_training
    from dswb.rundir import create_run_dir

    return run_training(config, create_run_dir(run_dir), resume=resume, reporter=reporter)


def write_samples(final: Path, splits: dict[str, Iterable], masks: bool = False, meta: dict | None = None,
                  files: dict[str, bytes | str] | None = None, shard_tokens: int = SHARD_TOKENS) -> Store:
    """Write named splits of samples into a new store at `final` (atomically) and open it.

    Each split is an iterable (a list or a generator) of token-id sequences, or, with
    `masks=True`, of `(ids, mask)` pairs. Samples are streamed to disk shard by shard.
    """
    final = Path(final)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = StoreWriter(tmp, masks=masks, shard_tokens=shard_tokens)
    try:
        bounds = {}
        for name, samples in splits.items():
            start = writer.n_samples
            for item in samples:
                if masks:
                    writer.add(*item)
                else:
                    writer.add(item)
            bounds[name] = np.arange(start, writer.n_samples)
        return writer.commit(final, bounds, meta, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
