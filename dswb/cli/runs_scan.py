"""Reading a run for `dswb runs`: the `runs list` row, one streaming pass over events.jsonl for
`runs show`, the LoRA adapters its stages trained (`final/<stage>/dswb_stage.json`'s `adapter`),
and the metric series `runs plot` draws.

Statistics are streamed through `StatsBook` (O(1) memory per metric); the readers normalise
types (`dswb.rundir.events`), so any file reads without error. No output here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dswb.rundir import EventTail, RunPaths, effective_state, read_status
from dswb.rundir.layout import is_adapter_dir
from dswb.rundir.status import LIVE_STATES  # noqa: F401 - the run states a command can still act on
from dswb.stats import StatsBook

FINAL_STATES = ("finished", "failed", "stopped", "lost")
STAT_KINDS = ("metrics", "eval", "system")
STAGE_INFO = "dswb_stage.json"        # the engine's record beside every final model (`dswb.engine.model.load`)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MERGED = "merged"                     # final/<stage>/merged/: written by `lora.merge_final`
MAX_ADAPTERS = 64                     # a directory with thousands of entries still gives a bounded list


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


@dataclass(frozen=True)
class StageAdapter:
    """A LoRA adapter a stage trained: its directory and what its `dswb_stage.json` records (values
    as the file has them: any type; print them through `safe_text`)."""

    stage: str
    path: Path
    record: dict
    size: int | None          # bytes of the adapter's weights file
    merged: bool              # final/<stage>/merged/ holds the merged full model too

    def get(self, key: str) -> Any:
        return self.record.get(key)

    def json(self) -> dict[str, Any]:
        return {"stage": self.stage, "path": str(self.path), "size": self.size, "merged": self.merged, **self.record}


def read_adapter(path: Path) -> StageAdapter | None:
    """The adapter in a final model directory, or None when it holds a full model (or nothing readable)."""
    if not is_adapter_dir(path):
        return None
    try:
        info = json.loads((path / STAGE_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    record = info.get("adapter") if isinstance(info, dict) else None
    return StageAdapter(stage=path.name, path=path, record=record if isinstance(record, dict) else {},
                        size=_weights_size(path), merged=(path / MERGED / "config.json").is_file())


def _weights_size(path: Path) -> int | None:
    for name in ADAPTER_WEIGHTS:
        try:
            return (path / name).stat().st_size
        except OSError:
            continue
    return None


def adapter_stages(paths: RunPaths) -> list[StageAdapter]:
    """The adapters under `final/`, one per LoRA stage, in name order (stages that trained in full: none)."""
    final = paths.root / "final"
    try:
        dirs = sorted(p for p in final.iterdir() if not p.name.startswith(".") and p.is_dir())
    except OSError:
        return []
    found = (read_adapter(p) for p in dirs[:MAX_ADAPTERS])
    return [a for a in found if a is not None]


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
    """Statistics per (kind, stage) of every metrics/eval/system event, the last eval and
    checkpoint, and the last `keep_alerts` alerts, in one pass over `path`."""
    scan = RunScan()
    tail = EventTail(path)
    for event in tail:
        scan.events += 1
        kind = event.get("kind")
        if kind in STAT_KINDS and isinstance(event.get("metrics"), dict):
            if not event["metrics"]:    # an evaluation that measured nothing (older runs wrote them)
                continue
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


def books_in_run_order(scan: RunScan, stages: Sequence[str]) -> list[tuple[tuple[str, str], StatsBook]]:
    """`scan`'s statistics grouped by stage, the stages in the run's order (`stages`, then any other
    in the order its events came), each stage's metrics, eval and system in that order: the last
    stage that ran comes last, just above the last eval."""
    rank = {stage: i for i, stage in enumerate(stages)}
    first_seen: dict[str, int] = {}
    for _, stage in scan.books:
        first_seen.setdefault(stage, len(first_seen))
    return sorted(scan.books.items(), key=lambda kv: (rank.get(kv[0][1], len(rank)), first_seen[kv[0][1]],
                                                      STAT_KINDS.index(kv[0][0])))


@dataclass
class Series:
    """One metric's points for one stage, in event order."""

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
