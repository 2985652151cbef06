"""`dswb run PRESET`: train headless in this process (or `--detach` into the background), or in
several processes under torchrun (`--nproc N`; `dswb.launch` supervises torchrun, and each rank it
starts runs this command again, see `_run_rank`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, RunsRoot, disk_errors
from dswb.config import load_config
from dswb.errors import UserError
from dswb.launch import SUPERVISED_ENV
from dswb.presets import find_preset
from dswb.rundir.layout import RunPaths, create_run_dir, new_run_id


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
    nproc: Annotated[Optional[int], typer.Option("--nproc", min=1, help="Processes on this machine, one per GPU (or CPU share): "
                                                 "the run starts under torchrun with parallel.mode ddp, fsdp or pipeline (none: ddp).")] = None,
    nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="Machines in the run (each runs the same command with its --node-rank; needs --run-dir on shared storage).")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", min=0, help="This machine's number, 0..nnodes-1 (0 writes the run directory).")] = 0,
    rdzv_endpoint: Annotated[Optional[str], typer.Option("--rdzv-endpoint", help="HOST:PORT of node 0, where the machines meet.")] = None,
) -> None:
    """Run the stages of a preset.

    Examples: `dswb run presets/demo.toml`, `dswb run smoke --set train.lr=3e-4`,
    `dswb run demo --stage sft --set sft.init=runs/<id>/final/pretrain`,
    `dswb run --resume runs/20261128-101500-demo`, `dswb run demo --detach`,
    `dswb run demo --nproc 4 --set parallel.mode=fsdp` (4 GPUs), on 2 machines:
    `dswb run demo --nproc 8 --nnodes 2 --node-rank 0 --rdzv-endpoint node0:29500 --run-dir /shared/runs/demo`.
    """
    from dswb.launch import under_torchrun

    if under_torchrun():
        if nproc is not None or nnodes > 1 or rdzv_endpoint:
            raise UserError("--nproc/--nnodes/--rdzv-endpoint start torchrun: this process already runs under it")
        if detach:
            raise UserError("--detach cannot be used inside torchrun (use `dswb run --nproc N --detach`)")
        _run_rank(preset, overrides, runs_root, run_dir, resume, plain, quiet, stages)
        return
    launch = _launch_options(nproc, nnodes, node_rank, rdzv_endpoint, run_dir, resume)
    if resume is not None:
        if overrides or stages:
            raise UserError("--set and --stage cannot be combined with --resume (the run keeps its config)")
        started = _resume(resume, runs_root, detach, launch, plain, quiet)
    else:
        started = _start(preset, overrides, stages, runs_root, run_dir, detach, launch, plain, quiet)
    if started is not None:
        _train_here(*started, resume=resume is not None, plain=plain, quiet=quiet)


def _launch_options(nproc: int | None, nnodes: int, node_rank: int, rdzv_endpoint: str | None, run_dir: Path | None,
                    resume: str | None):
    """The torchrun launch the options ask for, or None for one process."""
    if nproc is None and nnodes == 1 and not rdzv_endpoint:
        return None
    from dswb.launch import Launch

    if nnodes > 1 and run_dir is None and resume is None:
        raise UserError("--nnodes > 1: give --run-dir, a directory every machine sees (shared storage): the "
                        "ranks write one run directory and their checkpoint shards into it")
    if node_rank >= nnodes:
        raise UserError(f"--node-rank {node_rank}: must be below --nnodes ({nnodes})")
    return Launch(nproc=nproc or 1, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)


def _resume(resume: str, runs_root: Path, detach: bool, launch, plain: bool, quiet: bool):
    """(config, paths) of the run to continue in this process; None when there is nothing to do here
    (finished, or continued in the background or under torchrun)."""
    from dswb.rundir.layout import resolve_run
    from dswb.rundir.status import effective_state, read_status

    paths = resolve_run(resume, runs_root)
    if not paths.config.exists():
        raise UserError(f"{paths.root}: no config.toml, cannot resume")
    config = load_config(paths.config)
    state = effective_state(read_status(paths.status))
    if state in ("running", "paused", "starting"):
        raise UserError(f"{paths.root}: the run is still {state} (pid alive); stop it first")
    if state == "finished":
        typer.echo(f"{paths.root}: already finished")
        return None
    if detach:
        from dswb.launch import resume_detached

        _, pid = resume_detached(paths.root, launch=launch)
        typer.echo(f"{paths.root}  (pid {pid}, resumed in background)")
        return None
    if launch is not None:
        _supervise(launch, ["--resume", str(paths.root)] + _console(plain, quiet), paths)
    return config, paths


def _start(preset: str | None, overrides: list[str], stages: list[str], runs_root: Path, run_dir: Path | None,
           detach: bool, launch, plain: bool, quiet: bool):
    """(config, paths) of a new run to train in this process; None when it was started in the
    background."""
    if preset is None and not overrides:
        raise UserError("give a preset (e.g. `dswb run presets/demo.toml`), --set overrides of the defaults, "
                        "or --resume RUN")
    preset_path = find_preset(preset) if preset is not None else None
    if stages:
        overrides = [*overrides, stage_override(load_config(preset_path, overrides).run.stages, stages)]
    if detach:
        from dswb.launch import launch_detached

        paths, pid = launch_detached(preset_path and str(preset_path), runs_root, overrides, run_dir=run_dir,
                                     launch=launch)
        typer.echo(f"{paths.root}  (pid {pid}; follow with `dswb watch {paths.root}` or `dswb tui --attach {paths.root}`)")
        return None
    config = load_config(preset_path, overrides)
    target = run_dir if run_dir is not None else runs_root / new_run_id(config.run.name, runs_root)
    if (target / "config.toml").exists():
        raise UserError(f"{target}: a run already exists there (use --resume to continue it)")
    if launch is not None:
        paths = _new_distributed_run(config, target, launch)
        args = ([str(preset_path)] if preset_path else []) + ["--runs-root", str(runs_root), "--run-dir", str(target)]
        _supervise(launch, args + [x for o in overrides for x in ("--set", o)] + _console(plain, quiet), paths)
    return config, create_run_dir(target)


def _train_here(config, paths: RunPaths, *, resume: bool, plain: bool, quiet: bool) -> None:
    """Train in this process with a progress line, then print the per-stage table and the outcome."""
    from dswb.cli.pipeline_view import print_pipeline
    from dswb.cli.progress import PlainReporter, TTYReporter
    from dswb.engine.runner import run_training  # heavy: torch + transformers
    from dswb.rundir.status import read_status

    reporter = None
    if not quiet:
        reporter = TTYReporter() if (sys.stdout.isatty() and not plain) else PlainReporter()
    typer.echo(f"run directory: {paths.root}")
    outcome: dict = {}  # the end state even when status.json could not be written (a full disk)
    code = run_training(config, paths, resume=resume, reporter=reporter, argv=sys.argv, outcome=outcome)
    if reporter is not None:
        reporter.close()
    status = read_status(paths.status) or {}
    error = outcome.get("error") or status.get("error")
    state = outcome.get("state") or status.get("state") or "unknown"
    if not quiet:
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


def _console(plain: bool, quiet: bool) -> list[str]:
    return (["--plain"] if plain else []) + (["--quiet"] if quiet else [])


def _new_distributed_run(config, target: Path, launch) -> "RunPaths":
    """The run directory, created by node 0 (visible as `starting` at once); other nodes only make
    sure it exists (a shared directory)."""
    from dswb.rundir.layout import RunPaths
    from dswb.rundir.status import new_status, write_status

    if launch.node_rank > 0:
        target.mkdir(parents=True, exist_ok=True)
        return RunPaths(target)
    paths = create_run_dir(target)
    write_status(paths.status, {**new_status(config.run.stages[0], config.train.steps), "run_id": paths.run_id,
                                "stages": list(config.run.stages)})
    return paths


def _supervise(launch, dswb_args: list[str], paths) -> None:
    """Run torchrun for `launch` in the foreground; say how the run ended; exit with its code."""
    from dswb.launch import supervise, torchrun_env
    from dswb.rundir.status import read_status

    if launch.node_rank == 0:
        typer.echo(f"run directory: {paths.root}")
    code = supervise(launch.torchrun(dswb_args), paths, torchrun_env(launch.nproc), record=launch.node_rank == 0)
    if launch.node_rank > 0:
        raise typer.Exit(0 if code == 0 else 1)
    status = read_status(paths.status) or {}
    state = status.get("state") or "unknown"
    if status.get("error"):
        typer.echo(f"error: {status['error']}", err=True)
    typer.echo(f"{state}: {paths.root}")
    raise typer.Exit({"finished": 0, "stopped": 130}.get(state, 1))


def _run_rank(preset, overrides, runs_root, run_dir, resume, plain, quiet, stages) -> None:
    """One rank of a torchrun launch: join the world, agree on the run directory (rank 0 decides),
    train, and end the process as the notes say (`shutdown`)."""
    from dswb.engine.distributed.world import ensure_world, shutdown
    from dswb.rundir.layout import resolve_run

    paths = None
    if resume is not None:
        paths = resolve_run(resume, runs_root)
        if not paths.config.exists():
            raise UserError(f"{paths.root}: no config.toml, cannot resume")
        config = load_config(paths.config)
    else:
        preset_path = find_preset(preset) if preset is not None else None
        if stages:
            overrides = [*overrides, stage_override(load_config(preset_path, overrides).run.stages, stages)]
        config = load_config(preset_path, overrides)
    world = ensure_world(config)
    if paths is None:
        target, problem = None, None
        if world.is_main:
            target = run_dir if run_dir is not None else runs_root / new_run_id(config.run.name, runs_root)
            if (target / "config.toml").exists():
                problem = f"{target}: a run already exists there (use --resume to continue it)"
            else:
                create_run_dir(target)
        target, problem = world.broadcast((target, problem))
        if problem:
            if world.is_main:
                typer.echo(f"error: {problem}", err=True)
            shutdown(2, clean=False)
        target.mkdir(parents=True, exist_ok=True)
        paths = RunPaths(target)
    _train_rank(world, config, paths, resume, plain, quiet)


def _train_rank(world, config, paths, resume, plain, quiet) -> None:
    from dswb.cli.progress import PlainReporter, TTYReporter
    from dswb.engine.distributed.world import shutdown
    from dswb.engine.runner import run_training

    reporter = None
    announce = world.is_main and not os.environ.get(SUPERVISED_ENV)   # else `dswb run --nproc` says it
    if world.is_main and not quiet:
        reporter = TTYReporter() if (sys.stdout.isatty() and not plain) else PlainReporter()
    if announce:
        typer.echo(f"run directory: {paths.root} ({world.size} processes)")
    outcome: dict = {}
    code = run_training(config, paths, resume=resume is not None, reporter=reporter, argv=sys.argv, outcome=outcome)
    if reporter is not None:
        reporter.close()
    if announce:
        if outcome.get("error"):
            typer.echo(f"error: {outcome['error']}", err=True)
        typer.echo(f"{outcome.get('state') or 'unknown'}: {paths.root}")
    if outcome.get("state") == "stopped" and os.environ.get(SUPERVISED_ENV):
        code = 0   # torchrun reports any other code as a failure; `dswb run --nproc` says "stopped" (130)
    shutdown(code, clean=outcome.get("state") != "failed")
