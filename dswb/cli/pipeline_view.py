"""The per-stage table of a run (stage, state, steps, held-out accuracy or, for a stage on files,
its held-out loss, DPO accuracy or RL reward), as `dswb run` prints it at
the end and `dswb runs show` prints it for any run. Built by `dswb.rundir.pipeline`, the same
function the dashboard's eval tab uses. Standard library only."""

from __future__ import annotations

from dataclasses import asdict

from dswb.cli.common import print_table
from dswb.rundir import RunPaths
from dswb.rundir.events import read_events
from dswb.rundir.pipeline import COLUMNS, PipelineRow, pick, pipeline_from_events, shown_columns


def pipeline(paths: RunPaths, run_state: str | None = None) -> list[PipelineRow]:
    return pipeline_from_events(read_events(paths.events), run_state)


def print_pipeline(paths: RunPaths, run_state: str | None = None, title: str = "pipeline") -> list[PipelineRow]:
    """Print the table when the run has more than one stage or a post-training stage; returns the rows."""
    rows = pipeline(paths, run_state)
    if len(rows) > 1 or any(r.stage != "pretrain" for r in rows):
        columns = shown_columns(rows)
        print_table(list(pick(COLUMNS, columns)), [pick(r.cells(), columns) for r in rows],
                    numeric=[i for i, c in enumerate(columns) if c >= 2], title=title)
    return rows


def pipeline_json(rows: list[PipelineRow]) -> list[dict]:
    return [asdict(r) for r in rows]
