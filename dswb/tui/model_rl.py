"""Post-training (RL) in the model: the metric names that make a stage an RL stage (the RL tab
shows only then), and `samples` events, the latest rollouts (prompt, completion, rewards,
advantage), kept as a bounded tail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dswb.tui.sanitize import clean_samples, name_text, step_value, time_value

if TYPE_CHECKING:
    from dswb.tui.model import RunModel
    from dswb.tui.model_stage import StageModel

SAMPLES_TAIL = 20
RL_METRICS = ("reward", "kl", "entropy", "clip_ratio", "clip_frac", "completions/mean_length")


def has_rl_metrics(stage: StageModel) -> bool:
    return any(k in stage.series for k in RL_METRICS)


def on_samples(model: RunModel, event: dict) -> None:
    samples = clean_samples(event.get("samples"))
    stage = event.get("stage")
    step = event.get("step")
    model.samples.append({"stage": name_text(stage) if stage.__class__ is str else None,
                          "step": step_value(step) if step is not None else None,
                          "t": time_value(event.get("t")), "samples": samples})
    model.samples_total += 1
