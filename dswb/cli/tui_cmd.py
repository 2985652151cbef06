"""`dswb tui [--runs-root DIR] [--attach RUN] [--refresh S] [--nice N]`: open the dashboard
(also what bare `dswb` does).

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
Refresh = Annotated[float, typer.Option(
    "--refresh", min=0.05, max=60.0,
    help="Seconds between redraws of a live run (keys answer at once). Longer is lighter over SSH.")]
Nice = Annotated[int, typer.Option(
    "--nice", min=0, max=19,
    help="Lower the dashboard's CPU priority by this much so the training it watches comes first "
         "(0: unchanged). Runs launched from the dashboard keep your priority.")]

DEFAULT_REFRESH = 1.0
DEFAULT_NICE = 5


def tui(runs_root: RunsRoot = DEFAULT_RUNS_ROOT, attach: Attach = None, refresh: Refresh = DEFAULT_REFRESH,
        nice: Nice = DEFAULT_NICE) -> None:
    """Open the terminal dashboard: watch, launch and control runs. Quitting never stops training.

    Example: `dswb tui --runs-root runs --attach latest --refresh 2`
    """
    from dswb.tui.app import create_app, default_launcher, default_resumer
    from dswb.tui.priority import NormalPriority, lower_priority

    if runs_root == DEFAULT_RUNS_ROOT and os.environ.get("DSWB_RUNS_ROOT"):
        runs_root = Path(os.environ["DSWB_RUNS_ROOT"])  # bare `dswb` calls us without Typer
    # Benchmark hook (`dswb bench tui`): draw one frame headless, print when it was drawn, exit.
    first_frame = os.environ.get("DSWB_TUI_FIRST_FRAME") == "1"
    options: dict = {}
    keeper = None
    if nice > 0 and not first_frame:
        keeper = NormalPriority()  # before lowering ours: launches start from this thread
        options.update(launcher=keeper.wrap(default_launcher), resumer=keeper.wrap(default_resumer))
        lower_priority(nice)
    app = create_app(Path(runs_root), attach, exit_after_first_frame=first_frame, refresh_s=refresh, **options)
    try:
        app.run(headless=first_frame)
    finally:
        if keeper is not None:
            keeper.shutdown()
    if first_frame:
        typer.echo(f"first-frame {app.first_frame_at:.6f}")
