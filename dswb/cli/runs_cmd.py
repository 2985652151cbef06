"""`dswb runs list | show | plot | verify | stop | pause | resume | checkpoint`: runs from the shell.

This module holds the Typer sub-app with `list` and `show`, and registers the other commands:
`runs_plot` (plot), `runs_verify` (verify), `runs_control` (stop, pause, resume, checkpoint) and
`samples_cmd` (samples); `runs_scan` reads the events they summarise.

Everything here reads the run directory (status.json, events.jsonl, manifests) and writes only
control.jsonl, so it works the same for runs started from the shell or the dashboard.
The viewers take any file: the readers normalise types (`dswb.rundir.events`), every string from
a run file is printed through `safe_text` (control characters replaced, cut with a marker).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from dswb.cli import runs_control, runs_export, runs_plot, runs_verify, samples_cmd
from dswb.cli.common import (DEFAULT_RUNS_ROOT, NAME_LIMIT, RunRef, RunsRoot, echo_json, fmt_num, print_table,
                             safe_text, user_errors)
from dswb.cli.pipeline_view import pipeline, pipeline_json, print_pipeline
from dswb.cli.runs_scan import (LIVE_STATES, STAT_KINDS, StageAdapter, adapter_stages, books_in_run_order, run_summary,
                                scan_events)
from dswb.rundir import RunPaths, effective_state, find_runs, read_status, resolve_run
from dswb.util.fmt import fmt_age, fmt_bytes, fmt_duration, fmt_time

LIST_LIMIT = 20
ROWS_LIMIT = 200          # metrics per statistics table

app = typer.Typer(help="List, inspect, plot and control runs (stop, pause, resume, checkpoint).",
                  no_args_is_help=True)


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


def _metrics_text(metrics: dict) -> str:
    return safe_text("  ".join(f"{k}={fmt_num(v, 'nan')}" for k, v in metrics.items()))


@app.command("show")
@user_errors
def show(run: RunRef, runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
         as_json: Annotated[bool, typer.Option("--json", help="Print status and statistics as JSON.")] = False) -> None:
    """Show a run's status, count/mean/std/min/max/last of every metric of each stage (in the run's
    order: the last stage's last), the last eval and alerts.

    Example: `dswb runs show latest`
    """
    paths = resolve_run(run, runs_root)
    status = read_status(paths.status)
    state = effective_state(status)
    scan = scan_events(paths.events)
    if as_json:
        rows = pipeline(paths, state)
        stats: dict[str, dict] = {kind: {} for kind in STAT_KINDS if any(k == kind for k, _ in scan.books)}
        for (kind, stage), book in books_in_run_order(scan, [r.stage for r in rows]):
            stats[kind][stage] = book.summaries()
        echo_json({"run_id": paths.run_id, "path": str(paths.root), "state": state, "status": status,
                   "stats": stats, "last_eval": scan.last_eval, "last_checkpoint": scan.last_checkpoint,
                   "alerts": scan.alerts, "alert_count": scan.alert_count,
                   "pipeline": pipeline_json(rows),
                   "adapters": [a.json() for a in adapter_stages(paths)]})
        return
    _print_status(paths, status, state)
    _print_adapters(paths, status)
    typer.echo("")
    stages = [r.stage for r in print_pipeline(paths, state)]
    for (kind, stage), book in books_in_run_order(scan, stages):
        table = book.summaries()
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


def _print_adapters(paths: RunPaths, status: dict | None) -> None:
    """A line per stage that trained a LoRA adapter (nothing for a run without one)."""
    stages = (status or {}).get("stages")
    order = {name: i for i, name in enumerate(stages)} if isinstance(stages, list) else {}
    adapters = sorted(adapter_stages(paths), key=lambda a: (order.get(a.stage, len(order)), a.stage))
    for adapter in adapters:
        typer.echo(f"{'adapter':<12} {adapter_text(adapter, paths.root)}")
    unmerged = [a for a in adapters if not a.merged]
    if unmerged:
        example = safe_text(f"{paths.run_id}:{unmerged[-1].stage}")
        typer.echo(f"{'':<12} a full model from one: dswb export {example} --merge DIR")


def adapter_text(adapter: StageAdapter, run_root: Path | None = None) -> str:
    """`sft: LoRA r=16 alpha=32 on final/pretrain (adapter, 402.3 KiB)`: paths inside the run shown from
    its root, and the merged model when the run wrote one (`lora.merge_final`)."""
    kind = "LoRA" if adapter.get("quantize") in (None, "none") else f"QLoRA {safe_text(adapter.get('quantize'), 10)}"
    text = f"{safe_text(adapter.stage, NAME_LIMIT)}: {kind}"
    for key in ("r", "alpha"):
        if adapter.get(key) is not None:
            text += f" {key}={fmt_num(adapter.get(key))}"
    if adapter.get("base"):
        text += f" on {_run_relative(adapter.get('base'), run_root)}"
    if adapter.get("continued"):
        text += f", continuing {_run_relative(adapter.get('continued'), run_root)}"
    merged = f"; merged model in final/{safe_text(adapter.stage, NAME_LIMIT)}/merged" if adapter.merged else ""
    return f"{text} (adapter, {fmt_bytes(adapter.size)}{merged})"


def _run_relative(path: Any, run_root: Path | None) -> str:
    """`path` from the run's root when it lies inside it (`final/pretrain`), else as recorded."""
    text = safe_text(path)
    if run_root is None or not isinstance(path, str):
        return text
    try:
        return safe_text(str(Path(path).resolve().relative_to(run_root.resolve())))
    except (ValueError, OSError, RuntimeError):
        return text


# The other commands, in the order `dswb runs --help` lists them.
app.command("plot")(runs_plot.plot)
app.command("verify")(runs_verify.verify)
app.command("stop")(runs_control.stop)
app.command("pause")(runs_control.pause)
app.command("resume")(runs_control.resume)
app.command("checkpoint")(runs_control.checkpoint)
app.command("samples")(samples_cmd.samples)
app.command("export")(runs_export.export)
