"""Test helpers: tiny configs and in-process runs of the real engine."""

from __future__ import annotations

from pathlib import Path

from dswb.config import load_config

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
