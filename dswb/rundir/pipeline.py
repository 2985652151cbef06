"""The pipeline table of a run: one row per stage, in the run's order. Standard library only.

stage, state, steps done/total, `test_acc` (the last one: written at the end of an LM stage),
the best `task_acc` (held-out exact match during the stage) and, for the reward model, its
`test_pair_acc` at the end (else its last validation `pair_acc`) (docs/run-directory.md). It is built from per-stage facts, which come either from a
list of events (`stage_facts(events)`, for the CLI) or from a viewer's own folded model (the
dashboard passes dicts with the same keys). Anything that is not a finite number is left out.

A stage with none of those accuracies (one trained on files, or a pipelined one) shows what it has
in the `held-out` column, the cell naming the number: `reward 0.620` (PPO / GRPO: the last
`val_reward`, the mean reward of greedy completions of held-out prompts), `pref 71.0%` (DPO: the
last `val_rewards/accuracies`, its implicit reward's accuracy on held-out pairs) or `loss 1.234`
(the last `val_loss`: SFT, pretraining). `shown_columns` keeps a table narrow: the `held-out`
column only when some stage fills it, and then only the accuracy columns that some stage fills
(a run on the built-in task keeps today's six columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

COLUMNS = ("stage", "state", "steps", "test_acc", "best task_acc", "rm pair_acc", "held-out")
ACCURACY_COLUMNS = (3, 4, 5)
HELD_OUT_COLUMN = 6
FINAL_RUN_STATES = ("failed", "stopped", "lost")
MAX_STAGES = 64  # a hostile file naming thousands of stages still gives a bounded table


@dataclass(frozen=True)
class PipelineRow:
    stage: str
    state: str
    step: int
    total_steps: int
    test_acc: float | None
    best_task_acc: float | None
    pair_acc: float | None
    val_reward: float | None = None   # RL: the last held-out mean reward
    pref_acc: float | None = None     # DPO: the last held-out reward accuracy
    val_loss: float | None = None     # the last validation loss

    def cells(self) -> tuple[str, str, str, str, str, str, str]:
        """The row as text, one cell per `COLUMNS`: `120/120`, `71.1%`, `-` for what is not known."""
        if self.state == "pending":
            steps = "-"
        else:
            steps = f"{self.step:,}/{self.total_steps:,}" if self.total_steps else f"{self.step:,}"
        return (self.stage, self.state, steps, fmt_acc(self.test_acc), fmt_acc(self.best_task_acc),
                fmt_acc(self.pair_acc), self.held_out())

    def held_out(self) -> str:
        """The `held-out` cell: `-` when the stage has an accuracy column's number, else its held-out
        reward, DPO accuracy or validation loss, in that order of preference."""
        if any(v is not None for v in (self.test_acc, self.best_task_acc, self.pair_acc)):
            return "-"
        if self.val_reward is not None:
            return f"reward {self.val_reward:.3f}"
        if self.pref_acc is not None:
            return f"pref {fmt_acc(self.pref_acc)}"
        return "-" if self.val_loss is None else f"loss {self.val_loss:.3f}"


def shown_columns(rows: Sequence[PipelineRow]) -> list[int]:
    """Indices of the `COLUMNS` a table of `rows` shows: stage, state and steps; then, when no row
    fills `held-out`, the three accuracy columns (as before the column existed); else the accuracy
    columns that some row fills, and `held-out`."""
    cells = [row.cells() for row in rows]
    if all(c[HELD_OUT_COLUMN] == "-" for c in cells):
        return [0, 1, 2, *ACCURACY_COLUMNS]
    return [0, 1, 2, *(i for i in ACCURACY_COLUMNS if any(c[i] != "-" for c in cells)), HELD_OUT_COLUMN]


def pick(values: Sequence, columns: Sequence[int]) -> tuple:
    """`values` (one per `COLUMNS`) at `columns`."""
    return tuple(values[i] for i in columns)


def fmt_acc(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def finite(value: Any) -> float | None:
    """`value` as a float if it is a finite number (not a bool), else None."""
    if value.__class__ not in (int, float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    number = finite(value)
    return int(number) if number is not None and abs(number) < 2 ** 62 else None


def new_facts() -> dict:
    return {"state": "pending", "step": 0, "total_steps": 0, "test_acc": None, "best_task_acc": None,
            "pair_acc": None, "val_reward": None, "pref_acc": None, "val_loss": None}


def stage_facts(events: Iterable[Any]) -> tuple[list[str], dict[str, dict]]:
    """(stage order, facts per stage) folded from events; the order is the run's `stages`
    from its `run_start` config when it has one, else the order stages appeared in."""
    order: list[str] = []
    facts: dict[str, dict] = {}
    for event in events:
        if not isinstance(event, dict):
            continue
        kind = event.get("kind")
        if kind == "run_start":
            run = (event.get("config") or {}).get("run") if isinstance(event.get("config"), dict) else None
            stages = run.get("stages") if isinstance(run, dict) else None
            if isinstance(stages, list):
                order = [s for s in stages if isinstance(s, str)][:MAX_STAGES]
            continue
        stage = event.get("stage")
        if not isinstance(stage, str) or not stage:
            continue
        entry = facts.get(stage)
        if entry is None:
            if len(facts) >= MAX_STAGES:
                continue
            entry = facts[stage] = new_facts()
        _fold(entry, kind, event)
    return order, facts


def _fold(entry: dict, kind: Any, event: dict) -> None:
    step = _int(event.get("step"))
    if kind == "stage_start":
        entry["state"] = "running"
        entry["total_steps"] = max(0, _int(event.get("total_steps")) or 0)
    elif kind == "metrics" and step is not None:
        entry["step"] = step
        if entry["state"] == "pending":
            entry["state"] = "running"
    elif kind == "stage_end":
        state = event.get("state")
        entry["state"] = state if isinstance(state, str) and state else "finished"
        if step is not None and step > entry["step"]:
            entry["step"] = step
    elif kind == "eval":
        metrics = event.get("metrics")
        if isinstance(metrics, dict):
            fold_eval(entry, metrics)


def fold_eval(entry: dict, metrics: Mapping) -> None:
    """Fold one `eval` event's metrics into a stage's facts."""
    test = finite(metrics.get("test_acc"))
    if test is not None:
        entry["test_acc"] = test
    task = finite(metrics.get("task_acc"))
    if task is not None and (entry["best_task_acc"] is None or task > entry["best_task_acc"]):
        entry["best_task_acc"] = task
    test_pair = finite(metrics.get("test_pair_acc"))   # the reward model's held-out test pairs, at its end
    if test_pair is not None:
        entry["pair_acc"] = test_pair
        entry["pair_from_test"] = True
    pair = finite(metrics.get("pair_acc"))
    if pair is not None and not entry.get("pair_from_test"):
        entry["pair_acc"] = pair
    for key, metric in LAST_METRICS:
        value = finite(metrics.get(metric))
        if value is not None:
            entry[key] = value


LAST_METRICS = (("val_reward", "val_reward"), ("pref_acc", "val_rewards/accuracies"), ("val_loss", "val_loss"))


def pipeline_rows(order: Sequence[str], facts: Mapping[str, Mapping], run_state: str | None = None
                  ) -> list[PipelineRow]:
    """One row per stage: those of `order` first (pending when not started), then any other
    stage with facts. A stage still `running` in a run that failed, stopped or was lost shows
    the run's state."""
    names = list(dict.fromkeys([*order, *facts]))[:MAX_STAGES]
    rows = []
    for name in names:
        entry = facts.get(name) or new_facts()
        state = entry.get("state") if isinstance(entry.get("state"), str) else "pending"
        if state == "running" and run_state in FINAL_RUN_STATES:
            state = run_state
        rows.append(PipelineRow(
            stage=str(name), state=state, step=max(0, _int(entry.get("step")) or 0),
            total_steps=max(0, _int(entry.get("total_steps")) or 0), test_acc=finite(entry.get("test_acc")),
            best_task_acc=finite(entry.get("best_task_acc")), pair_acc=finite(entry.get("pair_acc")),
            val_reward=finite(entry.get("val_reward")), pref_acc=finite(entry.get("pref_acc")),
            val_loss=finite(entry.get("val_loss"))))
    return rows


def pipeline_from_events(events: Iterable[Any], run_state: str | None = None) -> list[PipelineRow]:
    """The table straight from a run's events (e.g. `read_events(paths.events)`)."""
    order, facts = stage_facts(events)
    return pipeline_rows(order, facts, run_state)
