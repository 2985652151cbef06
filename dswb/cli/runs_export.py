"""`dswb runs export RUN --to tensorboard|mlflow|wandb|trackio [--out DIR]`: a run's `events.jsonl` into a tracker.

The same sinks as `[monitor] report_to` (`dswb.engine.telemetry.sinks`), fed after the fact on this
thread: for a run made without sinks, one whose sink failed, or (W&B) one resumed offline. Without
`--out` the store goes under the run directory (`tensorboard/`, `mlflow/`, `wandb/`, `trackio/`); with
it, TensorBoard writes `<out>/<run id>/`, MLflow uses `<out>` as a file store directory or a tracking
URI, W&B writes `<out>/wandb/offline-run-*/` (offline unless `WANDB_MODE` says otherwise) and trackio
uses `<out>` as its store. MLflow, W&B and trackio always get a new run.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Annotated

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, RunRef, RunsRoot, user_errors
from dswb.config.load import SINK_LIBRARIES
from dswb.errors import UserError
from dswb.rundir import read_events, resolve_run


def run_config(paths) -> dict:
    """The resolved config: the last `run_start` event's, else config.toml's tables."""
    starts = [e for e in read_events(paths.events, ("run_start",)) if isinstance(e.get("config"), dict)]
    if starts:
        return starts[-1]["config"]
    try:
        return tomllib.loads(paths.config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@user_errors
def export(run: RunRef,
           to: Annotated[str, typer.Option("--to", help=f"Tracker: {', '.join(SINK_LIBRARIES)}.", show_default=False)],
           out: Annotated[str | None, typer.Option("--out", help="Directory (or MLflow tracking URI) to write to; "
                                                    "default: under the run directory.")] = None,
           runs_root: RunsRoot = DEFAULT_RUNS_ROOT) -> None:
    """Write an existing run's metrics, evals, system samples, alerts and samples to a tracker.

    Example: `dswb runs export latest --to tensorboard`, then `tensorboard --logdir runs/<id>/tensorboard`;
    `dswb runs export latest --to wandb`, then the printed `wandb sync <dir>` to upload it.
    """
    from dswb.engine.telemetry.sinks import export_events, make_sinks

    if to not in SINK_LIBRARIES:
        raise UserError(f"--to: unknown tracker {to!r} (known: {', '.join(SINK_LIBRARIES)})")
    if importlib.util.find_spec(SINK_LIBRARIES[to]) is None:
        raise UserError(f'--to {to} needs {SINK_LIBRARIES[to]}: pip install -e ".[{to}]"')
    paths = resolve_run(run, runs_root)
    if not paths.events.exists():
        raise UserError(f"{paths.root}: no events.jsonl to export")
    config = run_config(paths)
    if out is None:
        config = {**config, "monitor": {**(config.get("monitor") or {}), "report_dir": ""}}
        if to == "tensorboard" and any((paths.root / "tensorboard").rglob("events.out.tfevents*")):
            raise UserError(f"{paths.root / 'tensorboard'} already holds TensorBoard event files: pass --out DIR")
    elif to == "tensorboard" and any((Path(out) / paths.run_id).rglob("events.out.tfevents*")):
        raise UserError(f"{Path(out) / paths.run_id} already holds TensorBoard event files: choose another --out")
    (sink,) = make_sinks([to], target=out, continue_run=False)
    try:
        count = export_events(sink, paths.root, config, read_events(paths.events))
    except Exception as exc:   # the tracker's own error (a server, a permission), one line
        raise UserError(f"export to {to} failed: {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    typer.echo(f"wrote {count} events of run {paths.run_id} to {to}: {sink.where}")
    if sink.note:
        typer.echo(sink.note)
