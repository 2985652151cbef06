"""`dswb runs samples RUN`: the completions an RL stage recorded, with their rewards.

Reads the run's `samples` events (PPO and GRPO write a few every `samples_every` iterations) and
prints the latest ones: prompt, completion, total reward, reward per source, advantage, length
and whether the completion ended on its own. Users of RL read completions first when a curve
looks wrong; this shows them without opening the dashboard. Standard library only.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Optional

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, RunRef, RunsRoot, print_table, safe_text, user_errors
from dswb.errors import UserError
from dswb.rundir import resolve_run
from dswb.rundir.events import read_events

TEXT = 60


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}"


def sample_rows(samples: list[Any]) -> list[list[str]]:
    rows = []
    for s in samples:
        if not isinstance(s, dict):
            continue
        rewards = s.get("rewards") if isinstance(s.get("rewards"), dict) else {}
        per_source = " ".join(f"{safe_text(k, 20)}={_num(v)}" for k, v in list(rewards.items())[:6])
        rows.append([safe_text(s.get("prompt", ""), TEXT), safe_text(s.get("completion", ""), TEXT),
                     _num(s.get("reward")), per_source or "-", _num(s.get("advantage")),
                     _num(s.get("length"), 6), {True: "yes", False: "no"}.get(s.get("ended"), "-")])
    return rows


@user_errors
def samples(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
            stage: Annotated[Optional[str], typer.Option("--stage", help="Only this stage (ppo, grpo).")] = None,
            last: Annotated[int, typer.Option("--last", min=1, help="How many samples events to print.")] = 1,
            as_json: Annotated[bool, typer.Option("--json", help="Print the events as JSON lines.")] = False) -> None:
    """Print the latest rollouts an RL stage recorded.

    Example: `dswb runs samples latest --stage grpo --last 3`
    """
    paths = resolve_run(run, runs_root)
    events = [e for e in read_events(paths.events, ("samples",)) if stage is None or e.get("stage") == stage]
    if not events:
        where = f" of stage {stage}" if stage else ""
        raise UserError(f"{paths.root}: no samples recorded{where} (PPO and GRPO record them every "
                        f"samples_every iterations)")
    for event in events[-last:]:
        if as_json:
            typer.echo(json.dumps(event, ensure_ascii=False))
            continue
        typer.echo(f"{safe_text(event.get('stage'), 20)} step {_num(event.get('step'), 12)}")
        items = event.get("samples") if isinstance(event.get("samples"), list) else []
        print_table(["prompt", "completion", "reward", "per source", "advantage", "length", "ended"],
                    sample_rows(items))
        typer.echo("")
