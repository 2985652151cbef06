"""`dswb run PRESET`: train headless in this process (or `--detach` into the background)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, RunsRoot, disk_errors
from dswb.config import load_config
from dswb.errors import UserError
from dswb.presets import find_preset
from dswb.rundir.layout import create_run_dir, new_run_id


@disk_errors
def run(
    preset: Annotated[Optional[str], typer.Argument(help="Preset name (`demo`) or TOML file.")] = None,
    overrides: Annotated[list[str], typer.Option("--set", "-s", help="Override a field: SECTION.KEY=VALUE (repeatable).")] = [],
    runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Exact run directory (default: RUNS_ROOT/<time>-<name>).")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue a stopped/failed/lost run (directory or id).")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start in the background and return at once.")] = False,
    plain: Annotated[bool, typer.Option("--plain", help="Plain log lines instead of a progress bar.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the run directory and the outcome.")] = False,
    stages: Annotated[list[str], typer.Option("--stage", help="Run only this stage of the preset (repeatable).")] = [],
) -> None:
    """Run the stages of a preset.

    Examples: `dswb run presets/demo.toml`, `dswb run smoke --set train.lr=3e-4`,
    `dswb run demo --stage sft --set sft.init=runs/<id>/final/pretrain`,
    `dswb run --resume runs/20261128-101500-demo`, `dswb run demo --detach`.
    """
    from dswb.rundir.layout import resolve_run

    if resume is not None:
        paths = resolve_run(resume, runs_root)
        if not paths.config.exists():
            raise UserError(f"{paths.root}: no config.toml, cannot resume")
        if overrides or stages:
            raise UserError("--set and --stage cannot be combined with --resume (the run keeps its config)")
        config = load_config(paths.config)
        from dswb.rundir.status import effective_state, read_status
        state = effective_state(read_status(paths.status))
        if state in ("running", "paused", "starting"):
            raise UserError(f"{paths.root}: the run is still {state} (pid alive); stop it first")
        if state == "finished":
            typer.echo(f"{paths.root}: already finished")
            return
        if detach:
            from dswb.launch import resume_detached
            _, pid = resume_detached(paths.root)
            typer.echo(f"{paths.root}  (pid {pid}, resumed in background)")
            return
    else:
        if preset is None and not overrides:
            raise UserError("give a preset (e.g. `dswb run presets/demo.toml`), --set overrides of the defaults, "
                            "or --resume RUN")
        preset_path = find_preset(preset) if preset is not None else None
        if stages:
            overrides = [*overrides, stage_override(load_config(preset_path, overrides).run.stages, stages)]
        if detach:
            from dswb.launch import launch_detached
            paths, pid = launch_detached(preset_path and str(preset_path), runs_root, overrides, run_dir=run_dir)
            typer.echo(f"{paths.root}  (pid {pid}; follow with `dswb watch {paths.root}` or `dswb tui --attach {paths.root}`)")
            return
        config = load_config(preset_path, overrides)
        target = run_dir if run_dir is not None else runs_root / new_run_id(config.run.name, runs_root)
        if (target / "config.toml").exists():
            raise UserError(f"{target}: a run already exists there (use --resume to continue it)")
        paths = create_run_dir(target)

    from dswb.cli.progress import PlainReporter, TTYReporter
    from dswb.engine.runner import run_training  # heavy: torch + transformers

    reporter = None
    if not quiet:
        reporter = TTYReporter() if (sys.stdout.isatty() and not plain) else PlainReporter()
    typer.echo(f"run directory: {paths.root}")
    outcome: dict = {}  # the end state even when status.json could not be written (a full disk)
    code = run_training(config, paths, resume=resume is not None, reporter=reporter, argv=sys.argv, outcome=outcome)
    if reporter is not None:
        reporter.close()
    from dswb.rundir.status import read_status
    status = read_status(paths.status) or {}
    error = outcome.get("error") or status.get("error")
    state = outcome.get("state") or status.get("state") or "unknown"
    if not quiet:
        from dswb.cli.pipeline_view import print_pipeline
        typer.echo("")
        print_pipeline(paths, state, title="held-out accuracy after each stage")
    if error:
        typer.echo(f"error: {error}", err=True)
    typer.echo(f"{state}: {paths.root}")
    raise typer.Exit(code)


def stage_override(preset_stages: list[str], chosen: list[str]) -> str:
    """`--stage` as a `run.stages` override: the chosen stages, in the preset's order."""
    unknown = [s for s in chosen if s not in preset_stages]
    if unknown:
        raise UserError(f"--stage {unknown[0]}: not a stage of this preset (its stages: {', '.join(preset_stages)})")
    picked = [s for s in preset_stages if s in chosen]
    return "run.stages=[" + ", ".join(f'"{s}"' for s in picked) + "]"
