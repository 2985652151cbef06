"""`dswb tui [--runs-root DIR] [--attach RUN]`: open the dashboard (also what bare `dswb` does).

Textual is imported inside the command so `dswb --help` and the other commands stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, RunsRoot

Attach = Annotated[str | None, typer.Option(
    "--attach", "-a", help="Open this run's dashboard at once (id, unique part, path or `latest`).")]


def tui(runs_root: RunsRoot = DEFAULT_RUNS_ROOT, attach: Attach = None) -> None:
    """Open the terminal dashboard: watch, launch and control runs. Quitting never stops training.

    Example: `dswb tui --runs-root runs --attach latest`
    """
    from dswb.tui.app import create_app

    if runs_root == DEFAULT_RUNS_ROOT and os.environ.get("DSWB_RUNS_ROOT"):
        runs_root = Path(os.environ["DSWB_RUNS_ROOT"])  # bare `dswb` calls us without Typer
    # Benchmark hook (`dswb bench tui`): draw one frame headless, print when it was drawn, exit.
    first_frame = os.environ.get("DSWB_TUI_FIRST_FRAME") == "1"
    app = create_app(Path(runs_root), attach, exit_after_first_frame=first_frame)
    app.run(headless=first_frame)
    if first_frame:
        typer.echo(f"first-frame {app.first_frame_at:.6f}")
