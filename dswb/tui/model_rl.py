"""Post-training (RL) in the model: the metric names that make a stage an RL stage (the RL tab
shows only then) or the stage of a reasoning run (the RL tab adds its reasoning panel), and
`samples` events, the latest rollouts (prompt, completion, rewards, advantage; thinking and
answer in a reasoning run), kept as a bounded tail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dswb.tui.reasoning import has_reasoning
from dswb.tui.sanitize import clean_samples, name_text, step_value, time_value

if TYPE_CHECKING:
    from dswb.tui.model import RunModel
    from dswb.tui.model_stage import StageModel

SAMPLES_TAIL = 20
RL_METRICS = ("reward", "kl", "entropy", "clip_ratio", "clip_frac", "completions/mean_length")


def has_rl_metrics(stage: StageModel) -> bool:
    return any(k in stage.series for k in RL_METRICS)


def has_reasoning_metrics(stage: StageModel) -> bool:
    return has_reasoning(stage.series)


def unscorable_totals(stage: StageModel) -> dict[str, int]:
    """Completions each reward source could not score over the stage (`rewards/<source>/unscorable`
    summed over its iterations), by source."""
    totals = {}
    for name, history in stage.series.items():
        if name.startswith("rewards/") and name.endswith("/unscorable") and history.n:
            totals[name[len("rewards/"):-len("/unscorable")]] = round(history.mean * history.n)
    return totals


def on_samples(model: RunModel, event: dict) -> None:
    samples = clean_samples(event.get("samples"))
    stage = event.get("stage")
    step = event.get("step")
    model.samples.append({"stage": name_text(stage) if stage.__class__ is str else None,
                          "step": step_value(step) if step is not None else None,
                          "t": time_value(event.get("t")), "samples": samples})
    model.samples_total += 1
