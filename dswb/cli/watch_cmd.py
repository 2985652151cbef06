"""`dswb watch RUN`: follow a run's events as plain text lines, for logs and dumb terminals.

One line per event: time, stage, step, kind and its key fields, compactly formatted. It
follows the file from a remembered offset (a torn last line waits for its end) and exits when
the run reaches a final state, after printing what is left.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, RunRef, RunsRoot
from dswb.cli.common import user_errors
from dswb.cli.runs_cmd import FINAL_STATES, fmt_duration, fmt_num
from dswb.errors import UserError
from dswb.rundir import EventTail, effective_state, read_status, resolve_run
from dswb.rundir.events import EVENT_KINDS

KNOWN_KINDS = EVENT_KINDS + ("fp8",)
# `metrics` events: these first, in this order; the rest follow unless listed in QUIET.
KEY_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_s", "pad_efficiency", "eta_s")
QUIET = {"tokens_real", "tokens_padded", "batch_size", "seq_len", "data_wait_s"}
LABELS = {"grad_norm": "gnorm", "tokens_per_s": "tok/s", "step_time_s": "dt", "pad_efficiency": "pad",
          "eta_s": "eta", "skipped_steps": "skipped"}
DURATIONS = {"eta_s"}
SECONDS = {"step_time_s", "data_wait_s"}


def _pair(key: str, value: Any) -> str:
    if key in DURATIONS:
        text = fmt_duration(value)
    else:
        text = fmt_num(value, missing="nan") + ("s" if key in SECONDS and value is not None else "")
    return f"{LABELS.get(key, key)}={text}"


def _metrics_text(kind: str, metrics: dict) -> str:
    if kind != "metrics":
        return " ".join(_pair(k, v) for k, v in metrics.items())
    keys = [k for k in KEY_METRICS if k in metrics]
    keys += [k for k in metrics if k not in KEY_METRICS and k not in QUIET
             and not (k == "skipped_steps" and not metrics[k])]
    return " ".join(_pair(k, metrics[k]) for k in keys)


def _scalars(event: dict, skip: tuple[str, ...] = ()) -> str:
    return " ".join(_pair(k, v) for k, v in event.items()
                    if k not in ("t", "kind", "stage", "step", *skip) and (v is None or isinstance(v, (int, float, str))))


def describe(event: dict) -> str:
    """The part of an event line after its kind."""
    kind = event.get("kind")
    if isinstance(event.get("metrics"), dict) and kind in ("metrics", "eval", "system", "batching"):
        return _metrics_text(kind, event["metrics"])
    if kind == "run_start":
        return f"run {event.get('run_id', '?')}" + (" (resumed)" if event.get("resumed") else "")
    if kind == "stage_start":
        model, data = event.get("model") or {}, event.get("data") or {}
        parts = [_pair("total_steps", event.get("total_steps"))]
        parts += [_pair(k, model[k]) for k in ("params", "layers", "hidden", "vocab") if k in model]
        parts += [_pair(k, v) for k, v in data.items() if isinstance(v, (int, float))]
        return " ".join(parts)
    if kind == "checkpoint":
        took = event.get("seconds")
        took_text = f", {fmt_num(took)}s" if isinstance(took, (int, float)) else ""
        return f"{event.get('path')} ({event.get('reason', '?')}{took_text})"
    if kind == "alert":
        return f"{str(event.get('level', 'warning')).upper()} {event.get('code', '')}: {event.get('message', '')}"
    if kind == "log":
        return f"{event.get('level', 'info')}: {event.get('message', '')}"
    if kind == "control":
        return str(event.get("cmd"))
    if kind in ("stage_end", "run_end"):
        text = str(event.get("state", "?"))
        if event.get("final_path"):
            text += f" -> {event['final_path']}"
        if event.get("error"):
            text += f": {event['error']}"
        return text
    return _scalars(event)


def format_event(event: dict, totals: dict[str, int] | None = None) -> str:
    """`HH:MM:SS stage step N/T kind fields...` (totals: total steps per stage, when known)."""
    t = event.get("t")
    clock = time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "--:--:--"
    stage = event.get("stage") or "-"
    step = event.get("step")
    total = (totals or {}).get(stage)
    step_text = "-" if step is None else (f"{step}/{total}" if total else str(step))
    return f"{clock} {stage:<9} step {step_text:<11} {event.get('kind', '?'):<11} {describe(event)}".rstrip()


def last_events(path: Path, n: int, kinds: set[str] | None) -> tuple[list[dict], int]:
    """The last `n` complete events (of `kinds`) and the byte offset just after the last line."""
    try:
        size = path.stat().st_size
    except OSError:
        return [], 0
    chunk = 64 << 10
    while True:
        start = max(0, size - chunk)
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(size - start)
        end = data.rfind(b"\n")
        body = data[: end + 1] if end >= 0 else b""
        if start > 0:  # the first line may be cut: drop it
            body = body[body.find(b"\n") + 1:]
        events = []
        for line in body.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (not kinds or event.get("kind") in kinds):
                events.append(event)
        if len(events) >= n or start == 0:
            return (events[-n:] if n else []), start + end + 1 if end >= 0 else start
        chunk *= 4


@user_errors
def watch(run: RunRef,
          runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
          follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Keep following until the run ends.")] = True,
          kinds: Annotated[list[str] | None, typer.Option("--kind", "-k", help="Only these event kinds (repeatable), e.g. -k metrics -k eval.")] = None,
          from_start: Annotated[bool, typer.Option("--from-start", help="Print every event from the beginning.")] = False,
          lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Without --from-start, begin with the last N events.")] = 10,
          interval: Annotated[float, typer.Option("--interval", min=0.01, hidden=True, help="Seconds between polls.")] = 0.5,
          ) -> None:
    """Follow a run's events as plain text lines until the run finishes, fails or stops.

    Exit status: 0 when the run finished or stopped (or on Ctrl-C), 1 when it failed or was lost.

    Example: `dswb watch latest -k metrics -k eval`
    """
    wanted = set(kinds or ())
    unknown = sorted(wanted - set(KNOWN_KINDS))
    if unknown:
        raise UserError(f"--kind: unknown event kind '{unknown[0]}' (choose from {', '.join(KNOWN_KINDS)})")
    paths = resolve_run(run, runs_root)
    status = read_status(paths.status) or {}
    totals: dict[str, int] = {}
    if status.get("stage") and status.get("total_steps"):
        totals[status["stage"]] = status["total_steps"]

    def emit(event: dict) -> None:
        if event.get("kind") == "stage_start" and event.get("total_steps"):
            totals[event.get("stage") or "-"] = event["total_steps"]
        if not wanted or event.get("kind") in wanted:
            typer.echo(format_event(event, totals))

    try:
        if from_start:
            tail = EventTail(paths.events)
        else:
            recent, offset = last_events(paths.events, lines, wanted)
            for event in recent:
                emit(event)
            tail = EventTail(paths.events, offset=offset)
        while True:
            state = effective_state(read_status(paths.status))  # read first: then nothing is missed
            for event in tail:
                emit(event)
            if not follow:
                return
            if state in FINAL_STATES:
                error = (read_status(paths.status) or {}).get("error")
                typer.echo(f"run {paths.run_id} {state}" + (f": {error}" if error else ""))
                raise typer.Exit(0 if state in ("finished", "stopped") else 1)
            time.sleep(interval)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except BrokenPipeError:  # `dswb watch RUN | head`
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        raise typer.Exit(0) from None
