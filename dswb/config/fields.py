"""The building blocks of config sections: documented fields and the optimiser settings that
every training stage's section carries. Standard library only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def doc(default: Any, text: str, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, factory: Any = None) -> Any:
    """A dataclass field with documentation and validation bounds in its metadata."""
    meta = {"doc": text, "choices": choices, "min": min, "max": max}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class OptimSettings:
    """Optimisation settings every training stage has: `[train]` (pretraining) and each
    post-training section (`[sft]`, `[rm]`, ...) carry their own copy, with their own defaults."""

    steps: int = doc(1000, "Optimizer steps.", min=1)
    lr: float = doc(3e-4, "Peak learning rate.", min=0.0)
    min_lr_ratio: float = doc(0.1, "Final learning rate as a fraction of `lr`.", min=0.0, max=1.0)
    schedule: str = doc("cosine", "Decay after warmup.", choices=("cosine", "linear", "constant"))
    warmup_steps: int = doc(100, "Linear warmup steps.", min=0)
    weight_decay: float = doc(0.01, "AdamW weight decay (not applied to norms and biases).", min=0.0)
    betas: list[float] = doc(None, "AdamW betas.", factory=lambda: [0.9, 0.95])
    eps: float = doc(1e-8, "AdamW epsilon.", min=0.0)
    grad_accum: int = doc(1, "Micro-batches per optimizer step (loss weighted by tokens across them).", min=1)
    clip_grad: float = doc(1.0, "Max global gradient norm (0 = off).", min=0.0)
    max_bad_steps: int = doc(5, "Non-finite losses in a row before the run fails.", min=1)
    max_seconds: float = doc(0.0, "Stop the stage after this many seconds of training steps (0 = no limit); it then "
                             "finishes as usual (final eval, final model). A time limit is not resume-exact.", min=0.0)
    threads: int = doc(-1, "CPU threads for torch in this stage (-1: run.threads; 0: torch's default). A resumed "
                       "stage keeps the count it started with, so resume stays bitwise.", min=-1)
    eval_tasks: list[str] = doc(None, "lm-evaluation-harness tasks scored on this stage's final model at its end "
                                "(needs the lm-eval extra; see docs/lm-eval.md and `[eval] tasks_*`).", factory=list)
    lora: dict = doc(None, "This stage's changes to `[lora]` (a table `[<stage>.lora]` of its fields, e.g. r = 8).",
                     factory=dict)
