"""`dswb bench NAME [--json PATH]`: benchmarks that print a small table and write JSON.

Each benchmark is a module with `run(quick: bool) -> dict` and `format_table(result) -> str`.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import typer

from dswb.cli.common import JsonOut
from dswb.errors import UserError
from dswb.util.atomic import write_json_atomic

BENCHES = {
    "batching": "dswb.bench.batching",
    "loop": "dswb.bench.loop",
    "data": "dswb.bench.data",
    "rollout": "dswb.bench.rollout",
    "parallel": "dswb.bench.parallel",
    "faults": "dswb.bench.faults",
    "fp8": "dswb.bench.fp8",
    "rl": "dswb.bench.rl",
    "grpo-vs-trl": "dswb.bench.grpo_vs_trl",
    "lora": "dswb.bench.lora",
    "moe": "dswb.bench.moe",
    "mtp": "dswb.bench.mtp",
    "tui": "dswb.bench.tui",
    "sinks": "dswb.bench.sinks",
}


def bench(name: str = typer.Argument(..., help=f"One of: {', '.join(BENCHES)}."),
          json_path: JsonOut = None,
          quick: bool = typer.Option(False, "--quick", help="Smaller sizes, for a fast check."),
          trials: int | None = typer.Option(None, "--trials", min=1,
                                            help="Trials, for benchmarks that repeat a scenario "
                                                 "(faults, grpo-vs-trl, lora; moe, mtp: seeds)."),
          init: str | None = typer.Option(None, "--init", help="Start model directory (rl: a causal LM trained on the task)."),
          live: bool = typer.Option(False, "--live", help="tui: what watching a live training costs it "
                                                           "(throughput, viewer CPU, terminal bytes/s)."),
          threads: int | None = typer.Option(None, "--threads", min=0,
                                             help="tui --live: the training's torch threads (0: every core; "
                                                  "default: as the preset sets)."),
          parts: str | None = typer.Option(None, "--parts", help="Measurements to run, comma-separated, for "
                                           "benchmarks made of parts (lora: memory,sft,grpo,trl-grpo,trl-sft)."),
          task: str | None = typer.Option(None, "--task", help="grpo-vs-trl: the task, addition (default) or "
                                          "reasoning (presets/reasoning.toml's worked sums, format + exact-match "
                                          "rewards)."),
          ) -> None:
    """Run a benchmark and print its table.

    Examples: `dswb bench batching --json bench-results/batching.json`, `dswb bench faults --trials 20`,
    `dswb bench lora --parts memory`
    """
    if name not in BENCHES:
        raise UserError(f"unknown benchmark '{name}' (choose from {', '.join(BENCHES)})")
    module = importlib.import_module(BENCHES[name])
    accepted = inspect.signature(module.run).parameters
    extra = {}
    for option, value in (("trials", trials), ("init", init), ("live", live or None), ("parts", parts),
                          ("task", task)):
        if value is None:
            continue
        if option not in accepted:
            raise UserError(f"benchmark '{name}' takes no --{option}")
        extra[option] = value
    if threads is not None:
        if "threads" not in accepted or not live:
            raise UserError(f"--threads is for `dswb bench tui --live`, not '{name}'")
        extra["threads"] = threads
    if task is not None and task not in getattr(module, "TASKS", {}):
        raise UserError(f"--task: unknown task '{task}' (choose from {', '.join(module.TASKS)})")
    result = module.run(quick=quick, **extra)
    typer.echo(module.format_table(result))
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, result, fsync=False, indent=2, default=str)
        typer.echo(f"wrote {json_path}")
