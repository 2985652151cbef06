"""Learning-rate schedule as a pure function of the step: linear warmup, then cosine/linear/constant.

A pure function (not a stateful scheduler object) so resuming needs only the step number.
"""

from __future__ import annotations

import math


def lr_at(step: int, peak_lr: float, total_steps: int, warmup_steps: int, schedule: str,
          min_lr_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based). Warmup never outlasts the run."""
    warmup_steps = min(warmup_steps, total_steps)
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak_lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = peak_lr * min_lr_ratio
    if schedule == "linear":
        return floor + (peak_lr - floor) * (1.0 - progress)
    if schedule == "cosine":
        return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")

