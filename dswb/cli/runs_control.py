"""`dswb runs stop | pause | resume | checkpoint`: ask a live run to act, optionally waiting for it.

Commands are appended to the run's control.jsonl (`dswb.rundir.send_command`), the only file the
viewers write, so this works the same for runs started from the shell or the dashboard.
"""

from __future__ import annotations

import time
from typing import Annotated, Callable

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, RunRef, RunsRoot, user_errors
from dswb.cli.runs_scan import FINAL_STATES, LIVE_STATES
from dswb.errors import UserError
from dswb.rundir import EventTail, RunPaths, effective_state, read_status, resolve_run, send_command

WaitOption = Annotated[float, typer.Option("--wait", metavar="SECONDS", min=0,
                                           help="Wait up to this long for the run to act (0: don't wait).")]


def _send(paths: RunPaths, command: str) -> None:
    """Append `command` to the run's control file, if the run is alive to act on it."""
    status = read_status(paths.status)
    state = effective_state(status)
    if status is None:
        raise UserError(f"run {paths.run_id} has no status.json yet; it cannot take commands")
    if state == "lost":
        raise UserError(f"run {paths.run_id} is lost (process {status.get('pid')} is gone); "
                        f"continue it with `dswb run --resume {paths.root}`")
    if state not in LIVE_STATES:
        hint = f"; continue it with `dswb run --resume {paths.root}`" if command == "resume" and state == "stopped" else ""
        raise UserError(f"run {paths.run_id} is already {state}; nothing to {command}{hint}")
    send_command(paths.root, command)
    typer.echo(f"sent {command} to run {paths.run_id} ({state}, pid {status.get('pid')})")


def _wait_for(paths: RunPaths, wait: float, done: Callable[[str], bool], what: str) -> None:
    deadline = time.monotonic() + wait
    while True:
        state = effective_state(read_status(paths.status))
        if done(state):
            typer.echo(f"run {paths.run_id} is {state}")
            return
        if time.monotonic() >= deadline:
            typer.echo(f"run {paths.run_id} is still {state} after {wait:g}s (waiting for {what})", err=True)
            raise typer.Exit(1)
        time.sleep(0.1)


@user_errors
def stop(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT, wait: WaitOption = 0.0) -> None:
    """Ask a run to checkpoint and stop (state `stopped`; continue it later with `dswb run --resume`).

    Example: `dswb runs stop latest --wait 60`
    """
    paths = resolve_run(run, runs_root)
    _send(paths, "stop")
    if wait:
        _wait_for(paths, wait, lambda s: s in FINAL_STATES, "a final state")


@user_errors
def pause(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT, wait: WaitOption = 0.0) -> None:
    """Ask a running run to pause after its current step (it keeps its memory; `runs resume` continues).

    Example: `dswb runs pause latest --wait 10`
    """
    paths = resolve_run(run, runs_root)
    _send(paths, "pause")
    if wait:
        _wait_for(paths, wait, lambda s: s == "paused" or s in FINAL_STATES, "paused")


@user_errors
def resume(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT, wait: WaitOption = 0.0) -> None:
    """Resume a paused run. (A stopped run is continued with `dswb run --resume RUN_DIR`.)

    Example: `dswb runs resume latest`
    """
    paths = resolve_run(run, runs_root)
    _send(paths, "resume")
    if wait:
        _wait_for(paths, wait, lambda s: s != "paused", "running")


@user_errors
def checkpoint(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT, wait: WaitOption = 0.0) -> None:
    """Ask a run to write a checkpoint now.

    Example: `dswb runs checkpoint latest --wait 120`
    """
    paths = resolve_run(run, runs_root)
    tail = EventTail(paths.events, offset=paths.events.stat().st_size if paths.events.exists() else 0)
    _send(paths, "checkpoint")
    if not wait:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        state = effective_state(read_status(paths.status))  # before reading: no event is missed
        for event in tail.read_new():
            if event.get("kind") == "checkpoint":
                typer.echo(f"checkpoint written: {event.get('path')} (step {event.get('step')})")
                return
        if state in FINAL_STATES:
            raise UserError(f"run {paths.run_id} ended ({state}) before writing the checkpoint")
        time.sleep(0.1)
    typer.echo(f"no checkpoint from run {paths.run_id} after {wait:g}s", err=True)
    raise typer.Exit(1)
