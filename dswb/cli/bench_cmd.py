"""`dswb bench NAME [--json PATH]`: benchmarks that print a small table and write JSON.

Each benchmark is a module with `run(quick: bool) -> dict` and `format_table(result) -> str`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import typer

from dswb.cli.common import JsonOut
from dswb.errors import UserError

BENCHES = {
    "batching": "dswb.engine.bench.batching",
    "loop": "dswb.engine.bench.loop",
    "data": "dswb.engine.bench.data",
    "tui": "dswb.tui.bench",
}


def bench(name: str = typer.Argument(..., help=f"One of: {', '.join(BENCHES)}."),
          json_path: JsonOut = None,
          quick: bool = typer.Option(False, "--quick", help="Smaller sizes, for a fast check.")) -> None:
    """Run a benchmark and print its table.

    Example: `dswb bench batching --json bench-results/batching.json`
    """
    if name not in BENCHES:
        raise UserError(f"unknown benchmark '{name}' (choose from {', '.join(BENCHES)})")
    module = importlib.import_module(BENCHES[name])
    result = module.run(quick=quick)
    typer.echo(module.format_table(result))
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2, default=str))
        typer.echo(f"wrote {json_path}")
