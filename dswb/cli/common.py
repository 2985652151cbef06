"""Options shared by several commands, defined once as typed aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RunsRoot = Annotated[Path, typer.Option("--runs-root", help="Directory holding run directories.",
                                        envvar="DSWB_RUNS_ROOT")]
RunRef = Annotated[str, typer.Argument(help="Run id, unique part of it, a path, or `latest`.")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON to this path.")]

DEFAULT_RUNS_ROOT = Path("runs")
