"""`dswb eval TARGET --tasks ...`: lm-evaluation-harness tasks on a saved model (`dswb.engine.eval.harness`).

Prints a task / metric / value (± stderr) table; `--json` writes lm-eval's results (no samples) with
dswb's fields. When TARGET names a run (RUN[:stage]), the numbers are also appended to the run's
`events.jsonl` as an `eval` event of that stage (one `os.write` on an O_APPEND descriptor, safe beside a
live writer) and sent to the run's trackers (`[monitor] report_to`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from dswb.errors import UserError
from dswb.rundir.events import json_safe
from dswb.rundir.layout import is_model_dir
from dswb.util.atomic import write_json_atomic


def run_lm_eval(target: str, model_dir: Path, tasks: str, *, include: list[str], limit: int | None,
                num_fewshot: int | None, batch_size: int, device: str, json_path: Path | None) -> None:
    from dswb.engine.eval import harness  # light; lm_eval itself loads inside run_tasks

    names = [n.strip() for n in tasks.split(",") if n.strip()]
    if not names:
        raise UserError("--tasks: no task names given")
    harness.require_lm_eval("--tasks")
    from dswb.engine.model.load import stage_info

    info = stage_info(model_dir)
    result = harness.run_tasks(model_dir, names, include=include, limit=limit, num_fewshot=num_fewshot,
                               batch_size=batch_size, device=device, where="--tasks")
    typer.echo(f"model    {model_dir}  (stage {info.get('stage') or '-'}, lm-eval {result['lm_eval_version']})")
    rows = harness.metric_rows(result)
    width = max([len("task")] + [len(t) for t, *_ in rows])
    mwidth = max([len("metric")] + [len(m) for _, m, *_ in rows])
    typer.echo(f"{'task':<{width}}  {'metric':<{mwidth}}  value")
    for task, metric, value, stderr in rows:
        err = f" ± {stderr:.4f}" if stderr is not None else ""
        typer.echo(f"{task:<{width}}  {metric:<{mwidth}}  {value:.4f}{err}")
    typer.echo(f"time     {result['seconds']:.1f}s")
    event = None
    if not is_model_dir(Path(target).expanduser()):   # a run: RUN[:stage]
        events = model_dir.parent.parent / "events.jsonl"   # <run>/final/<stage>
        event = append_eval_event(events, model_dir.name, int(info.get("step") or 0), harness.flatten(result),
                                  harness.event_source(result))
        n = len(event['metrics'])
        typer.echo(f"event    eval ({n} metric{'s' if n != 1 else ''}) appended to {events}")
        send_to_sinks(events.parent, event)
    if json_path is not None:
        out = {**result, "model": str(model_dir), "stage": info.get("stage"), "target": target,
               "metrics": harness.flatten(result), "event_appended": event is not None}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, json_safe(json.loads(json.dumps(out, default=str))), fsync=False, indent=2)
        typer.echo(f"wrote {json_path}")


def send_to_sinks(run_root: Path, event: dict) -> None:
    """The event also to the run's own trackers (`[monitor] report_to`), continuing their runs as a resume
    does; a tracker that fails is one line, the event stays in events.jsonl (`dswb runs export` later)."""
    from dswb.cli.runs_export import run_config
    from dswb.config.load import SINK_LIBRARIES
    from dswb.rundir.layout import RunPaths

    config = run_config(RunPaths(run_root))
    names = [n for n in (config.get("monitor") or {}).get("report_to") or [] if n in SINK_LIBRARIES]
    if not names:
        return
    from dswb.engine.telemetry.sinks import export_events, make_sinks

    for sink in make_sinks(names, continue_run=True):
        try:
            export_events(sink, run_root, config, [event])
            typer.echo(f"sent to  {sink.name}: {sink.where}")
        except Exception as exc:   # the tracker's own error: the event is safe in events.jsonl
            typer.echo(f"sink     {sink.name} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")


def append_eval_event(events_path: Path, stage: str, step: int, metrics: dict, source: dict) -> dict:
    """Append an `eval` event (the engine's schema) to a run's events.jsonl with one write."""
    event = {"t": round(time.time(), 3), "kind": "eval", "stage": stage, "step": step, "metrics": metrics,
             "source": source}
    line = (json.dumps(json_safe(event), default=str, allow_nan=False) + "\n").encode("utf-8")
    try:
        fd = os.open(events_path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise UserError(f"{events_path}: cannot append the eval event: {exc.strerror}") from None
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return event
