"""The data side's events in a run directory: `data_progress` while preparing, `data_report` after.

`progress_events(monitor, stage, control)` is the progress callback `prepare_data` takes: it
emits each (throttled) progress dict as a `data_progress` event and raises
`PreparationStopped` when the run is asked to stop (Ctrl-C, SIGTERM, a viewer's stop command),
so a long preparation stops at once and resumes from its last complete shard.
`publish_report` writes `data-report.json` to the run directory and emits `data_report`.
Both only need an object with `emit(kind, stage, step, **fields)` (the engine's `Monitor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from dswb.engine.data.corpus.prepare import PreparationStopped
from dswb.util.atomic import write_json_atomic

REPORT_FILE = "data-report.json"


def progress_events(monitor: Any, stage: str | None, control: Any = None) -> Callable[[dict], None]:
    def on_progress(fields: dict) -> None:
        monitor.emit("data_progress", stage, 0, **fields)
        if control is not None:
            control.poll()
            if control.stop_requested:
                raise PreparationStopped(control.stop_reason or "stop requested")
    return on_progress


def report_path(run_root: Path) -> Path:
    return Path(run_root) / REPORT_FILE


def publish_report(monitor: Any, stage: str | None, run_root: Path, stats: dict) -> dict:
    """Write the data report (with the cache key and tokenizer) and emit it; returns it."""
    report = {**stats.get("report", {}), "cache_hit": stats.get("cache_hit"), "cache_key": stats.get("cache_key"),
              "tokenizer": stats.get("tokenizer")}
    path = report_path(run_root)
    write_json_atomic(path, report, fsync=False, tmp_name=path.name + ".tmp", indent=1, default=str)
    monitor.emit("data_report", stage, 0, report=report)
    return report
