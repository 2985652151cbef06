"""`dswb watch RUN`: follow a run's events as plain text lines, for logs and dumb terminals.

One line per event: time, stage, step, kind and its key fields, compactly formatted. It
follows the file from a remembered offset (a torn last line waits for its end) and exits when
the run reaches a final state, after printing what is left. Whatever a line holds (wrong types,
huge or non-finite numbers, megabytes of text, control characters), it prints one short line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, RunRef, RunsRoot, fmt_num, user_errors
from dswb.cli.runs_scan import FINAL_STATES
from dswb.errors import UserError
from dswb.rundir import EventTail, effective_state, read_status, resolve_run
from dswb.rundir.events import EVENT_KINDS
from dswb.tui.sanitize import clean_status
from dswb.util.fmt import cut_text, fmt_duration, is_number

KNOWN_KINDS = tuple(dict.fromkeys(EVENT_KINDS + ("fp8", "samples", "moe")))
TEXT_LIMIT = 1000  # messages, errors: longer ones end with `… [cut, 1.9 MiB]`
FIELD_LIMIT = 60  # names and other short fields
# `metrics` events: these first, in this order; the rest follow unless listed in QUIET.
KEY_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_s", "pad_efficiency", "eta_s")
QUIET = {"tokens_real", "tokens_padded", "batch_size", "seq_len", "data_wait_s"}
LABELS = {"grad_norm": "gnorm", "tokens_per_s": "tok/s", "step_time_s": "dt", "pad_efficiency": "pad",
          "eta_s": "eta", "skipped_steps": "skipped"}
DURATIONS = {"eta_s"}
SECONDS = {"step_time_s", "data_wait_s"}


def _text(value: Any, limit: int = FIELD_LIMIT) -> str:
    return cut_text(value, limit, one_line=True)


def _pair(key: Any, value: Any) -> str:
    label = LABELS.get(key, _text(key)) if isinstance(key, str) else _text(key)
    if value is not None and not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"{label}={_text(value)}"
    if key in DURATIONS:
        text = fmt_duration(value) if is_number(value) else fmt_num(value, missing="nan")
    else:
        text = fmt_num(value, missing="nan") + ("s" if key in SECONDS and value is not None else "")
    return f"{label}={text}"


def _metrics_text(kind: str, metrics: dict) -> str:
    items = list(metrics.items())[:64]
    if kind != "metrics":
        return " ".join(_pair(k, v) for k, v in items)
    keys = [k for k in KEY_METRICS if k in metrics]
    keys += [k for k, v in items if k not in KEY_METRICS and k not in QUIET and not (k == "skipped_steps" and not v)]
    return " ".join(_pair(k, metrics[k]) for k in keys)


def _scalars(event: dict, skip: tuple[str, ...] = ()) -> str:
    return " ".join(_pair(k, v) for k, v in list(event.items())[:32]
                    if k not in ("t", "kind", "stage", "step", *skip) and (v is None or isinstance(v, (int, float, str))))


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def describe(event: dict) -> str:
    """The part of an event line after its kind."""
    kind = event.get("kind")
    if isinstance(event.get("metrics"), dict) and kind in ("metrics", "eval", "system", "batching"):
        return _metrics_text(kind, event["metrics"])
    if kind == "run_start":
        return f"run {_text(event.get('run_id', '?'))}" + (" (resumed)" if event.get("resumed") is True else "")
    if kind == "stage_start":
        model, data = _dict(event.get("model")), _dict(event.get("data"))
        parts = [_pair("total_steps", event.get("total_steps"))]
        parts += [_pair(k, model[k]) for k in ("params", "layers", "hidden", "vocab") if k in model]
        parts += [_pair(k, v) for k, v in list(data.items())[:16] if isinstance(v, (int, float))]
        return " ".join(parts)
    if kind == "checkpoint":
        took = event.get("seconds")
        took_text = f", {fmt_num(took)}s" if is_number(took) else ""
        return f"{_text(event.get('path'), 300)} ({_text(event.get('reason', '?'))}{took_text})"
    if kind == "alert":
        level = _text(event.get("level", "warning")).upper()
        return f"{level} {_text(event.get('code', ''))}: {_text(event.get('message', ''), TEXT_LIMIT)}"
    if kind == "log":
        return f"{_text(event.get('level', 'info'))}: {_text(event.get('message', ''), TEXT_LIMIT)}"
    if kind == "control":
        return _text(event.get("cmd"))
    if kind == "samples":
        samples = [s for s in event.get("samples") or [] if isinstance(s, dict)] \
            if isinstance(event.get("samples"), list) else []
        shown = "; ".join(f"{_text(s.get('prompt'), 40)} -> {_text(s.get('completion'), 40)} "
                          f"(reward {fmt_num(s.get('reward'), missing='-')})" for s in samples[:3])
        return f"{len(samples)} rollouts" + (f": {shown}" if shown else "")
    if kind == "moe":
        layers = [x for x in event.get("layers") or [] if isinstance(x, dict)] \
            if isinstance(event.get("layers"), list) else []
        dead = sum(len(x["dead"]) for x in layers if isinstance(x.get("dead"), list))
        return (f"{_text(event.get('family', '?'), 30)} {_text(event.get('balance', '?'), 20)}, {len(layers)} layers, "
                f"max/mean load {' '.join(fmt_num(x.get('imbalance'), missing='-') for x in layers[:16])}"
                + (" ..." if len(layers) > 16 else "") + f", dead experts {dead}")
    if kind in ("stage_end", "run_end"):
        text = _text(event.get("state", "?"))
        if event.get("final_path"):
            text += f" -> {_text(event['final_path'], 300)}"
        if event.get("error"):
            text += f": {_text(event['error'], TEXT_LIMIT)}"
        return text
    return _scalars(event)


def format_event(event: dict, totals: dict[str, int] | None = None) -> str:
    """`HH:MM:SS stage step N/T kind fields...` (totals: total steps per stage, when known)."""
    t = event.get("t")
    clock = time.strftime("%H:%M:%S", time.localtime(t)) if is_number(t) and abs(t) < 1e11 else "--:--:--"
    raw_stage = event.get("stage")
    stage = _text(raw_stage, 40) if raw_stage else "-"
    step = event.get("step")
    total = (totals or {}).get(stage) if isinstance(raw_stage, str) else None
    step_text = "-" if step is None else (f"{_text(step, 20)}/{total}" if total else _text(step, 20))
    kind = _text(event.get("kind", "?"), 20)
    return f"{clock} {stage:<9} step {step_text:<11} {kind:<11} {describe(event)}".rstrip()


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
            except (ValueError, RecursionError):  # junk and absurdly nested lines are skipped
                continue
            if isinstance(event, dict) and (not kinds or event.get("kind") in kinds):
                events.append(event)
        if len(events) >= n or start == 0:
            return (events[-n:] if n else []), start + end + 1 if end >= 0 else start
        chunk *= 4


def _new_events(tail: EventTail):
    """Every complete event not read yet; a chunk the reader cannot parse at all is skipped."""
    for _ in range(10_000):  # bounded: a reader that failed without moving on cannot spin here
        try:
            batch = tail.read_new()
        except (ValueError, RecursionError):
            continue  # the offset moved past it
        if not batch:
            return
        yield from batch


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
    status = clean_status(read_status(paths.status)) or {}
    totals: dict[str, int] = {}
    if status.get("stage") and status.get("total_steps"):
        totals[status["stage"]] = status["total_steps"]

    def emit(event: dict) -> None:
        kind = event.get("kind")
        total, stage = event.get("total_steps"), event.get("stage")
        if kind == "stage_start" and isinstance(total, int) and not isinstance(total, bool) and total > 0 \
                and isinstance(stage, str):
            totals[stage] = total
        if not wanted or (isinstance(kind, str) and kind in wanted):
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
            state = effective_state(clean_status(read_status(paths.status)))  # read first: then nothing is missed
            for event in _new_events(tail):
                emit(event)
            if not follow:
                return
            if state in FINAL_STATES:
                error = (clean_status(read_status(paths.status)) or {}).get("error")
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
