"""`dswb runs list | show | plot | verify | stop | pause | resume | checkpoint`: runs from the shell.

Everything here reads the run directory (status.json, events.jsonl, manifests) and writes only
control.jsonl, so it works the same for runs started from the shell or the dashboard.
Statistics are streamed through `StatsBook` (O(1) memory per metric); plots downsample long
series to about two points per column (min and max per bucket) before plotext sees them.

The viewers take any file: the readers normalise types (`dswb.rundir.events`), every string from
a run file is printed through `safe_text` (control characters replaced, cut with a marker), and
values plotext cannot draw (beyond +-1e300, subnormal) are clipped with a note.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Sequence

import typer

from dswb.cli import samples_cmd
from dswb.cli.pipeline_view import pipeline, pipeline_json, print_pipeline
from dswb.cli.common import DEFAULT_RUNS_ROOT, RunRef, RunsRoot, print_table, safe_text, user_errors
from dswb.errors import UserError
from dswb.rundir import (EventTail, RunPaths, effective_state, find_runs, read_status, resolve_run,
                         send_command)
from dswb.rundir.events import json_safe
from dswb.stats import RunningStats, StatsBook

FINAL_STATES = ("finished", "failed", "stopped", "lost")
LIVE_STATES = ("starting", "running", "paused")
STAT_KINDS = ("metrics", "eval", "system")
LIST_LIMIT = 20
NAME_LIMIT = 60           # metric and stage names in tables
ROWS_LIMIT = 200          # metrics per statistics table
JSON_TEXT_LIMIT = 10_000  # strings in --json output
JSON_DEPTH_LIMIT = 32
PLOT_LIMIT = 1e300        # plotext overflows beyond this (and below 1e-300 in magnitude)

app = typer.Typer(help="List, inspect, plot and control runs (stop, pause, resume, checkpoint).",
                  no_args_is_help=True)


# --- helpers shared with the other command modules ------------------------------------------

def fmt_num(value: Any, missing: str = "-") -> str:
    """Compact number: 4 significant digits, k/M/G above 10,000, exponent below 0.001."""
    if value is None:
        return missing
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return safe_text(value, NAME_LIMIT)
    try:
        v = float(value)
    except OverflowError:
        return "huge"
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if isinstance(value, int) and a < 10_000:
        return str(value)
    if a >= 10_000:
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if a >= scale:
                return f"{v / scale:.3g}{suffix}"
    if a == 0:
        return "0"
    if a < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds >= 1e9:
        return ">30y"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_age(t: Any, now: float | None = None) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return fmt_duration(max(0.0, (now or time.time()) - t)) + " ago"


def fmt_time(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError):
        return "-"



def json_view(value: Any, depth: int = 0) -> Any:
    """`value` made safe for --json output: standard JSON (no NaN/Inf), strings cut with a
    marker, nesting cut at `JSON_DEPTH_LIMIT`."""
    if isinstance(value, str):
        return safe_text(value, JSON_TEXT_LIMIT) if len(value) > JSON_TEXT_LIMIT else value
    if isinstance(value, (dict, list, tuple)) and depth >= JSON_DEPTH_LIMIT:
        return "... [cut: nested too deep]"
    if isinstance(value, dict):
        return {str(k)[:JSON_TEXT_LIMIT]: json_view(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_view(v, depth + 1) for v in value]
    return json_safe(value)


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(json_view(value), indent=1, default=str))


# --- runs list -------------------------------------------------------------------------------

def run_summary(paths: RunPaths) -> dict[str, Any]:
    """One row of `runs list`: what status.json says, with the state a viewer should show."""
    status = read_status(paths.status) or {}
    last = status.get("last_metrics") or {}
    updated = status.get("updated")
    if updated is None:
        try:
            updated = paths.config.stat().st_mtime
        except OSError:
            updated = None
    return {
        "run_id": paths.run_id, "path": str(paths.root),
        "state": effective_state(status or None), "stage": status.get("stage"),
        "step": status.get("step"), "total_steps": status.get("total_steps"),
        "loss": last.get("loss"), "eta_s": status.get("eta_s"),
        "started": status.get("started"), "updated": updated, "error": status.get("error"),
    }


def _step_text(step: Any, total: Any) -> str:
    if step is None:
        return "-"
    return f"{step}/{total}" if total else str(step)


@app.command("list")
@user_errors
def list_runs(runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
              all_runs: Annotated[bool, typer.Option("--all", "-a", help=f"Show every run, not only the newest {LIST_LIMIT}.")] = False,
              as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False) -> None:
    """List runs under the runs root, newest first: state, stage, step, last loss, last update.

    Example: `dswb runs list --runs-root runs --all`
    """
    runs = find_runs(runs_root)
    shown = runs if all_runs else runs[:LIST_LIMIT]
    summaries = [run_summary(r) for r in shown]
    if as_json:
        echo_json(summaries)
        return
    if not runs:
        typer.echo(f"no runs under {runs_root}")
        return
    now = time.time()
    rows = [[s["run_id"], safe_text(s["state"], NAME_LIMIT), safe_text(s["stage"] or "-", NAME_LIMIT),
             _step_text(s["step"], s["total_steps"]),
             fmt_num(s["loss"]), fmt_duration(s["eta_s"]) if s["state"] in LIVE_STATES else "-",
             fmt_age(s["updated"], now)] for s in summaries]
    print_table(["run", "state", "stage", "step", "loss", "eta", "updated"], rows, numeric=(3, 4))
    if len(runs) > len(shown):
        typer.echo(f"... {len(runs) - len(shown)} older runs not shown (--all)")


# --- runs show -------------------------------------------------------------------------------

@dataclass
class RunScan:
    """What one pass over events.jsonl learns: statistics per (kind, stage) and notable events."""

    books: dict[tuple[str, str], StatsBook] = field(default_factory=dict)
    last_eval: dict | None = None
    last_checkpoint: dict | None = None
    alerts: list[dict] = field(default_factory=list)
    alert_count: int = 0
    events: int = 0
    bad_lines: int = 0


def scan_events(path: Path, ema_decay: float = 0.9, keep_alerts: int = 10) -> RunScan:
    scan = RunScan()
    tail = EventTail(path)
    for event in tail:
        scan.events += 1
        kind = event.get("kind")
        if kind in STAT_KINDS and isinstance(event.get("metrics"), dict):
            key = (kind, event.get("stage") or "-")
            book = scan.books.get(key)
            if book is None:
                book = scan.books[key] = StatsBook(ema_decay)
            book.update(event["metrics"])
            if kind == "eval":
                scan.last_eval = event
        elif kind == "alert":
            scan.alert_count += 1
            scan.alerts = (scan.alerts + [event])[-keep_alerts:]
        elif kind == "checkpoint":
            scan.last_checkpoint = event
    scan.bad_lines = tail.bad_lines
    return scan


def safe_summary(stats: RunningStats) -> dict[str, float]:
    """`stats.summary()` that survives overflow: with values near +-1e308 the running variance can
    become -inf or NaN, where `math.sqrt` raises; the std is then NaN."""
    var = stats.m2 / stats.count if stats.count > 1 else 0.0
    return {"count": stats.count, "mean": stats.mean, "std": math.sqrt(var) if var >= 0 else math.nan,
            "min": stats.min, "max": stats.max, "last": stats.last, "ema": stats.ema}


def safe_summaries(book: StatsBook) -> dict[str, dict[str, float]]:
    return {name: safe_summary(s) for name, s in sorted(book.by_name.items())}


def _metrics_text(metrics: dict) -> str:
    return safe_text("  ".join(f"{k}={fmt_num(v, 'nan')}" for k, v in metrics.items()))


@app.command("show")
@user_errors
def show(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
         as_json: Annotated[bool, typer.Option("--json", help="Print status and statistics as JSON.")] = False) -> None:
    """Show a run's status and count/mean/std/min/max/last of every metric, the last eval and alerts.

    Example: `dswb runs show latest`
    """
    paths = resolve_run(run, runs_root)
    status = read_status(paths.status)
    state = effective_state(status)
    scan = scan_events(paths.events)
    if as_json:
        stats: dict[str, dict] = {}
        for (kind, stage), book in sorted(scan.books.items()):
            stats.setdefault(kind, {})[stage] = safe_summaries(book)
        echo_json({"run_id": paths.run_id, "path": str(paths.root), "state": state, "status": status,
                   "stats": stats, "last_eval": scan.last_eval, "last_checkpoint": scan.last_checkpoint,
                   "alerts": scan.alerts, "alert_count": scan.alert_count,
                   "pipeline": pipeline_json(pipeline(paths, state))})
        return
    _print_status(paths, status, state)
    typer.echo("")
    print_pipeline(paths, state)
    for (kind, stage), book in sorted(scan.books.items(), key=lambda kv: (STAT_KINDS.index(kv[0][0]), kv[0][1])):
        table = safe_summaries(book)
        rows = [[safe_text(name, NAME_LIMIT), s["count"], fmt_num(s["mean"]), fmt_num(s["std"]), fmt_num(s["min"]),
                 fmt_num(s["max"]), fmt_num(s["last"])] for name, s in list(table.items())[:ROWS_LIMIT]]
        typer.echo("")
        print_table(["metric", "count", "mean", "std", "min", "max", "last"], rows,
                    numeric=(1, 2, 3, 4, 5, 6), title=f"{kind} ({safe_text(stage, NAME_LIMIT)})")
        if len(table) > ROWS_LIMIT:
            typer.echo(f"... {len(table) - ROWS_LIMIT} more metrics not shown (--json shows all)")
    if not scan.books:
        typer.echo("\nno metrics recorded yet")
    if scan.last_eval:
        e = scan.last_eval
        typer.echo(f"\nlast eval    {safe_text(e.get('stage'), NAME_LIMIT)} step {e.get('step')}: "
                   f"{_metrics_text(e['metrics'])}")
    if scan.last_checkpoint:
        c = scan.last_checkpoint
        typer.echo(f"checkpoint   {safe_text(c.get('path'))} ({safe_text(c.get('reason', '?'), NAME_LIMIT)}, step {c.get('step')})")
    if scan.alert_count:
        more = f", last {len(scan.alerts)}" if scan.alert_count > len(scan.alerts) else ""
        typer.echo(f"\nalerts ({scan.alert_count}{more}):")
        for a in scan.alerts:
            typer.echo(f"  step {a.get('step')}  {safe_text(a.get('level', '?'), NAME_LIMIT)}  "
                       f"{safe_text(a.get('code', ''), NAME_LIMIT)}: {safe_text(a.get('message', ''))}")
    if scan.bad_lines:
        typer.echo(f"\n{scan.bad_lines} unreadable line(s) in {paths.events.name} skipped")


def _print_status(paths: RunPaths, status: dict | None, state: str) -> None:
    lines = [("run", f"{paths.run_id}  ({paths.root})")]
    if status is None:
        lines.append(("state", f"{state} (no status.json yet)"))
    else:
        where = f"pid {status.get('pid')} on {safe_text(status.get('host'), NAME_LIMIT)}" if status.get("pid") else ""
        lines.append(("state", f"{safe_text(state, NAME_LIMIT)}  {where}".rstrip()))
        stages = status.get("stages") or []
        stage_text = f"{safe_text(status.get('stage'), NAME_LIMIT)}  step {_step_text(status.get('step'), status.get('total_steps'))}"
        if len(stages) > 1:
            stage_text += f"  (stages: {safe_text(', '.join(map(str, stages)))})"
        lines.append(("stage", stage_text))
        world = status.get("world_size")
        if isinstance(world, int) and not isinstance(world, bool) and world > 1:
            ranks = status.get("ranks") if isinstance(status.get("ranks"), list) else []
            devices = sorted({safe_text(r.get("gpu_name") or r.get("device"), NAME_LIMIT)
                              for r in ranks if isinstance(r, dict) and (r.get("gpu_name") or r.get("device"))})
            hosts = {safe_text(r.get("host"), NAME_LIMIT) for r in ranks if isinstance(r, dict) and r.get("host")}
            text = f"{world} processes ({safe_text(status.get('parallel_mode') or '?', NAME_LIMIT)})"
            if hosts:
                text += f" on {len(hosts)} host{'s' if len(hosts) > 1 else ''}"
            if devices:
                text += f", {', '.join(devices)}"
            lines.append(("world", text))
        started, updated = status.get("started"), status.get("updated")
        times = f"started {fmt_time(started)}   updated {fmt_age(updated)}"
        if isinstance(started, (int, float)) and isinstance(updated, (int, float)):
            times += f"   elapsed {fmt_duration(updated - started)}"
        if state in LIVE_STATES and status.get("eta_s") is not None:
            times += f"   eta {fmt_duration(status.get('eta_s'))}"
        lines.append(("time", times))
        if status.get("error"):
            lines.append(("error", safe_text(status["error"])))
    for label, text in lines:
        typer.echo(f"{label:<12} {text}")


# --- runs plot -------------------------------------------------------------------------------

def downsample_minmax(xs: Sequence[float], ys: Sequence[float], buckets: int) -> tuple[list[float], list[float]]:
    """At most ~2 x `buckets` points: the min and max of each equal-count bucket, in x order.

    Keeps spikes visible (unlike striding or averaging) and the first and last points (so the x
    range is exact), and makes plotting cost independent of the series length.
    """
    n = len(xs)
    buckets = max(1, buckets)
    if n <= 2 * buckets:
        return list(xs), list(ys)
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if lo >= hi:
            continue
        seg = ys[lo:hi]
        i_min = lo + seg.index(min(seg))
        i_max = lo + seg.index(max(seg))
        keep = {i_min, i_max} | ({0} if b == 0 else set()) | ({n - 1} if b == buckets - 1 else set())
        for i in sorted(keep):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


@dataclass
class Series:
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)


def collect_series(path: Path, names: Sequence[str], stage: str | None = None, x_axis: str = "step"
                   ) -> tuple[dict[str, dict[str, Series]], set[str], set[str]]:
    """`{metric: {stage: Series}}` for the wanted names, plus every metric name and stage seen."""
    wanted = set(names)
    series: dict[str, dict[str, Series]] = {name: {} for name in names}
    available: set[str] = set()
    stages: set[str] = set()
    t0 = None
    for event in EventTail(path):
        metrics = event.get("metrics")
        if event.get("kind") not in STAT_KINDS or not isinstance(metrics, dict):
            continue
        ev_stage = event.get("stage") or "-"
        stages.add(ev_stage)
        available.update(metrics)
        if stage is not None and ev_stage != stage:
            continue
        if x_axis == "step":
            x = event.get("step")
        else:
            t = event.get("t")
            if t is None:
                continue
            t0 = t if t0 is None else t0
            x = t - t0
        if not isinstance(x, (int, float)) or not math.isfinite(x):
            continue
        for name in wanted.intersection(metrics):
            y = metrics[name]
            if isinstance(y, bool) or not isinstance(y, (int, float)):
                continue
            s = series[name].get(ev_stage)
            if s is None:
                s = series[name][ev_stage] = Series()
            s.xs.append(x)
            s.ys.append(float(y))
    return series, available, stages


def plot_value(v: float) -> tuple[float, bool]:
    """`v` moved into the range plotext can draw (|v| <= 1e300, no subnormals); True if it moved."""
    if v > PLOT_LIMIT or v < -PLOT_LIMIT:
        return math.copysign(PLOT_LIMIT, v), True
    if v != 0 and abs(v) < 1 / PLOT_LIMIT:
        return 0.0, True
    return v, False


def _drawable(xs: list[float], ys: list[float]) -> tuple[list[float], list[float], int]:
    out_x, out_y, moved = [], [], 0
    for x, y in zip(xs, ys):
        (x, mx), (y, my) = plot_value(float(x)), plot_value(float(y))
        out_x.append(x)
        out_y.append(y)
        moved += mx or my
    return out_x, out_y, moved


def render_plot(series: dict[str, dict[str, Series]], width: int, height: int, x_axis: str,
                title: str = "", color: bool = False) -> str:
    import plotext as plt

    notes = []

    plt.clear_figure()
    names = list(series)
    if len(names) > 1:
        plt.subplots(len(names), 1)
    plt.plot_size(width, height * len(names))
    for row, name in enumerate(names, 1):
        if len(names) > 1:
            plt.subplot(row, 1)
        by_stage = series[name]
        for stage, s in by_stage.items():
            xs, ys, moved = _drawable(*downsample_minmax(s.xs, s.ys, width))
            if moved:
                notes.append(f"note: {moved} point(s) of {safe_text(name, NAME_LIMIT)} ({safe_text(stage, NAME_LIMIT)}) "
                             f"beyond +-1e300 or below 1e-300 in size are drawn clipped")
            plt.plot(xs, ys, label=safe_text(stage, NAME_LIMIT) if len(by_stage) > 1 else None)
        label = safe_text(name, NAME_LIMIT)
        plt.title(f"{title}  {label}".strip() if row == 1 else label)
        plt.xlabel("step" if x_axis == "step" else "seconds")
    text = plt.build()
    plt.clear_figure()
    text = text if color else plt.uncolorize(text)
    return "\n".join([text, *notes])


@app.command("plot")
@user_errors
def plot(run: RunRef,
         metrics: Annotated[list[str], typer.Option("--metric", "-m", help="Metric to plot (repeatable; one chart each).")] = ["loss"],  # noqa: B006
         runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
         stage: Annotated[str | None, typer.Option("--stage", help="Only this stage (default: every stage, one line each).")] = None,
         x_axis: Annotated[str, typer.Option("--x", help="x axis: step or time (seconds since the first event).")] = "step",
         width: Annotated[int | None, typer.Option("--width", min=20, help="Chart width in columns (default: terminal width).")] = None,
         height: Annotated[int | None, typer.Option("--height", min=5, help="Height of each chart in lines.")] = None,
         color: Annotated[bool | None, typer.Option("--color/--no-color", help="ANSI colours (default: on a TTY).")] = None) -> None:
    """Plot metrics from a run's events in the terminal (metrics, eval and system events).

    Example: `dswb runs plot latest --metric loss --metric lr --width 100`
    """
    if x_axis not in ("step", "time"):
        raise UserError(f"--x: expected step or time, got '{x_axis}'")
    paths = resolve_run(run, runs_root)
    series, available, stages = collect_series(paths.events, metrics, stage, x_axis)
    if stage is not None and stage not in stages:
        raise UserError(f"run {paths.run_id} has no metrics for stage '{stage}' "
                        f"(stages: {safe_text(', '.join(sorted(stages))) or 'none yet'})")
    for name in metrics:
        if not series[name]:
            names = sorted(available)
            known = ", ".join(safe_text(n, NAME_LIMIT) for n in names[:30]) or "none recorded yet"
            if len(names) > 30:
                known += f", ... {len(names) - 30} more"
            raise UserError(f"metric '{name}' not found in run {paths.run_id} (available: {known})")
    term = shutil.get_terminal_size((100, 30))
    width = width or max(40, term.columns)
    height = height or max(10, min(25, (term.lines - 2) // len(metrics)))
    if color is None:
        color = sys.stdout.isatty()
    try:
        text = render_plot(series, width, height, x_axis, title=paths.run_id, color=color)
    except Exception as exc:  # noqa: BLE001 - a plotting library fault must not become a traceback
        typer.echo(f"error: could not draw the plot ({type(exc).__name__}: {safe_text(exc)})", err=True)
        raise typer.Exit(1) from None
    typer.echo(text)


# --- runs verify -----------------------------------------------------------------------------

VERIFY_RESULT = {"ok": "ok", "unverified": "unverified (no manifest)", "mismatch": "MISMATCH"}


@app.command("verify")
@user_errors
def verify(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
           as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False) -> None:
    """Check every checkpoint and final model of a run against its manifest (sizes, BLAKE2b checksums).

    Exits 1 if any file is missing, changed or unlisted. Directories written before manifests
    existed show as unverified. Example: `dswb runs verify latest`
    """
    from dswb.rundir.manifest import run_artifacts, verify_dir
    from dswb.rundir.space import fmt_bytes

    paths = resolve_run(run, runs_root)
    check, aside = run_artifacts(paths.root)
    results = [verify_dir(d) for d in check]
    bad = [r for r in results if r.status == "mismatch"]
    rel = lambda p: str(p.relative_to(paths.root))  # noqa: E731
    if as_json:
        echo_json({"run_id": paths.run_id, "ok": not bad, "set_aside": [rel(p) for p in aside],
                   "results": [{"path": rel(r.path), "status": r.status, "files": r.files, "bytes": r.bytes,
                                "problems": r.problems} for r in results]})
    elif not results:
        typer.echo(f"run {paths.run_id} has no checkpoints or final models yet")
    else:
        print_table(["directory", "files", "size", "result"],
                    [[rel(r.path), r.files or "-", fmt_bytes(r.bytes) if r.files else "-", VERIFY_RESULT[r.status]]
                     for r in results], numeric=(1, 2))
        for r in bad:
            for problem in r.problems:
                typer.echo(f"{rel(r.path)}: {safe_text(problem)}")
        for p in aside:
            why = "failed verification earlier" if not p.name.startswith(".tmp-") else "interrupted write, removed on resume"
            typer.echo(f"set aside, not checked: {rel(p)} ({why})")
        counts = {k: sum(r.status == k for r in results) for k in VERIFY_RESULT}
        typer.echo(f"{len(results)} checked: {counts['ok']} ok, {counts['unverified']} unverified, "
                   f"{counts['mismatch']} mismatch")
    if bad:
        raise typer.Exit(1)


# --- control: stop, pause, resume, checkpoint ------------------------------------------------

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


@app.command("stop")
@user_errors
def stop(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT, wait: WaitOption = 0.0) -> None:
    """Ask a run to checkpoint and stop (state `stopped`; continue it later with `dswb run --resume`).

    Example: `dswb runs stop latest --wait 60`
    """
    paths = resolve_run(run, runs_root)
    _send(paths, "stop")
    if wait:
        _wait_for(paths, wait, lambda s: s in FINAL_STATES, "a final state")


@app.command("pause")
@user_errors
def pause(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT, wait: WaitOption = 0.0) -> None:
    """Ask a running run to pause after its current step (it keeps its memory; `runs resume` continues).

    Example: `dswb runs pause latest --wait 10`
    """
    paths = resolve_run(run, runs_root)
    _send(paths, "pause")
    if wait:
        _wait_for(paths, wait, lambda s: s == "paused" or s in FINAL_STATES, "paused")


@app.command("resume")
@user_errors
def resume(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT, wait: WaitOption = 0.0) -> None:
    """Resume a paused run. (A stopped run is continued with `dswb run --resume RUN_DIR`.)

    Example: `dswb runs resume latest`
    """
    paths = resolve_run(run, runs_root)
    _send(paths, "resume")
    if wait:
        _wait_for(paths, wait, lambda s: s != "paused", "running")


@app.command("checkpoint")
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


app.command("samples")(samples_cmd.samples)
