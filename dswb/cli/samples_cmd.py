"""`dswb runs samples RUN`: the completions an RL stage recorded, with their rewards.

Reads the run's `samples` events (PPO and GRPO write a few every `samples_every` iterations) and
prints the latest ones: prompt, completion, total reward, reward per source, advantage, length
and whether the completion ended on its own. Users of RL read completions first when a curve
looks wrong; this shows them without opening the dashboard. In a reasoning run (rows with a
`think`), the answer and the thinking are shown apart, the thinking folded to one line;
`--think` prints each thinking in full below the table. Standard library only.
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
from dswb.tui.reasoning import answer_of, any_think, fold_think, has_think, think_size

TEXT = 60
THINK_TEXT = 2100  # a thinking printed in full (the engine writes up to 2000 characters)
HEADERS = ["prompt", "completion", "reward", "per source", "advantage", "length", "ended"]
REASONING_HEADERS = ["#", "prompt", "answer", "think"] + HEADERS[2:]
THINK_HELP = "Reasoning runs: print each completion's thinking in full below the table (folded to one line in it)."


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


def reasoning_rows(samples: list[Any]) -> list[list[str]]:
    """The rows of a reasoning run's samples: number, prompt, answer, folded thinking, then as
    `sample_rows`. A row without a thinking shows its completion as its answer."""
    rows = []
    for i, (s, row) in enumerate(zip([s for s in samples if isinstance(s, dict)], sample_rows(samples)), start=1):
        if has_think(s):
            answer = answer_of(s)
            shown = [safe_text(answer, TEXT) if answer is not None else "(none: the thinking never closed)",
                     safe_text(fold_think(s["think"], s.get("think_tokens")), 2 * TEXT)]
        else:
            shown = [row[1], "-"]
        rows.append([str(i), row[0], *shown, *row[2:]])
    return rows


def think_blocks(samples: list[Any]) -> list[str]:
    """Each thinking in full (`--think`): a heading naming its row, then its lines indented."""
    lines = []
    for i, s in enumerate([s for s in samples if isinstance(s, dict)], start=1):
        if has_think(s):
            lines.append(f"#{i} thinking ({think_size(s['think'], s.get('think_tokens'))}):")
            lines += [f"  {safe_text(line, THINK_TEXT)}" for line in s["think"][:THINK_TEXT].strip().splitlines()]
            if len(s["think"]) > THINK_TEXT:
                lines.append(f"  ... [cut: {len(s['think']):,} chars]")
    return lines


@user_errors
def samples(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
            stage: Annotated[Optional[str], typer.Option("--stage", help="Only this stage (ppo, grpo).")] = None,
            last: Annotated[int, typer.Option("--last", min=1, help="How many samples events to print.")] = 1,
            as_json: Annotated[bool, typer.Option("--json", help="Print the events as JSON lines.")] = False,
            think: Annotated[bool, typer.Option("--think", help=THINK_HELP)] = False) -> None:
    """Print the latest rollouts an RL stage recorded.

    Example: `dswb runs samples latest --stage grpo --last 3` (`--think`: the thinking in full)
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
        if not any_think(items):
            print_table(HEADERS, sample_rows(items))
            typer.echo("")
            continue
        print_table(REASONING_HEADERS, reasoning_rows(items), wrap=True)
        typer.echo("")
        if think:
            typer.echo("\n".join(think_blocks(items)))
            typer.echo("")
