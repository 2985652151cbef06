"""`TensorBoardSink`: the run as TensorBoard event files (`torch.utils.tensorboard.SummaryWriter`).

Written to `<run>/tensorboard/` (or `<report_dir>/<run id>/`), one subdirectory per stage (a
TensorBoard "run" each: `pretrain`, `sft`, ...): a scalar per number of the event kinds in
`SCALAR_KINDS` (`<stage>/<name>` at the event's step), alerts as text under `<stage>/alerts`, RL
samples as text under `<stage>/samples`, a Markdown summary of the stage's latest metrics at its
`stage_end` (`<stage>/summary`). The resolved config is in the top directory, with anything outside
a stage: as text (`config`) and as hyper-parameters (the HParams tab, `section.key`).

One writer per stage is what lets a resumed run leave no duplicate steps: a stage that starts again
at step k (its `stage_start`) in a directory that already holds its events opens a writer with
`purge_step = k + 1`, whose first record tells TensorBoard's readers to drop that stage's earlier
events from step k + 1 on (the steps trained again after the checkpoint). Steps restart at every
stage, so a purge in a directory shared by stages would also drop the earlier stages' later steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from dswb.engine.telemetry.sinks.base import (SCALAR_KINDS, Sink, alert_text, dumps, scalars, stage_name, step_of,
                                              summary_text)

SAMPLES_SHOWN = 8       # RL samples per `samples` event written as text
RUN_LEVEL = "run"       # `stage_name` of an event outside a stage: written to the top directory


def hparam_values(config: dict) -> dict[str, bool | int | float | str]:
    """The resolved config as HParams values: `section.key` -> a number, bool or string (JSON otherwise)."""
    out: dict[str, bool | int | float | str] = {}
    for section, table in config.items():
        for key, value in (table.items() if isinstance(table, dict) else [("", table)]):
            ok = isinstance(value, (bool, int, float, str)) and not (isinstance(value, int) and abs(value) >= 2 ** 53)
            out[f"{section}.{key}" if key else section] = value if ok else json.dumps(value, default=str)
    return out


def has_event_files(directory: Path) -> bool:
    return any(directory.glob("events.out.tfevents*"))


class TensorBoardSink(Sink):
    name = "tensorboard"

    def _open(self) -> None:
        import torch.utils.tensorboard  # noqa: F401 - the import's cost (and failure) belongs to opening
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._summary = Summary
        base = self.report_dir()
        self.logdir = self.run_dir / "tensorboard" if not base else Path(base) / self.run_dir.name
        self.where = str(self.logdir)
        self._writers: dict = {}
        self._earlier: dict[str, bool] = {}   # stage -> its directory held events before this sink wrote there

    def _stage_dir(self, stage: str) -> Path:
        return self.logdir if stage == RUN_LEVEL else self.logdir / stage

    def _had_events(self, stage: str) -> bool:
        """Whether the stage's directory held events before this sink wrote there (looked at once)."""
        if stage not in self._earlier:
            self._earlier[stage] = has_event_files(self._stage_dir(stage))
        return self._earlier[stage]

    def _writer(self, stage: str, purge_step: int | None = None):
        """The stage's writer, opened on first use (again, with `purge_step`, when resuming the stage)."""
        from torch.utils.tensorboard import SummaryWriter

        self._had_events(stage)
        writer = self._writers.get(stage)
        if writer is None or purge_step is not None:
            if writer is not None:
                writer.close()
            writer = self._writers[stage] = SummaryWriter(log_dir=str(self._stage_dir(stage)), flush_secs=10,
                                                          purge_step=purge_step)
        return writer

    def _write(self, event: dict) -> None:
        kind, step, stage = event.get("kind"), step_of(event), stage_name(event)
        wall = event.get("t") if isinstance(event.get("t"), (int, float)) else None
        if kind == "stage_start" and self.continue_run and stage != RUN_LEVEL \
                and self._had_events(stage):
            self._earlier[stage] = False          # purge once, at the stage's (re)start
            self._writer(stage, purge_step=step + 1)
        if kind in SCALAR_KINDS:
            values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in scalars(event)]
            if values:   # one record for the event's numbers: 8x less CPU than one `add_scalar` each
                self._writer(stage)._get_file_writer().add_summary(self._summary(value=values), step, wall)
        if kind == "alert":
            self._writer(stage).add_text(f"{stage}/alerts", alert_text(event), step, walltime=wall)
        elif kind == "samples":
            rows = event.get("samples") or []
            self._writer(stage).add_text(f"{stage}/samples", "```\n" + dumps(rows[:SAMPLES_SHOWN]) + "\n```", step,
                                         walltime=wall)
        elif kind == "run_start" and isinstance(event.get("config"), dict):
            w = self._writer(RUN_LEVEL)
            w.add_text("config", "```\n" + dumps(event["config"]) + "\n```", 0, walltime=wall)
            if not self._had_events(RUN_LEVEL):   # the HParams tab: one session per run directory
                from torch.utils.tensorboard.summary import hparams

                for summary in hparams(hparam_values(event["config"]), {}):
                    w._get_file_writer().add_summary(summary, 0, wall)
        elif kind == "stage_end":
            w = self._writer(stage)
            w.add_text(f"{stage}/summary", summary_text(stage, event.get("state"), self.last.get(stage, {})), step,
                       walltime=wall)
            w.flush()

    def _close(self) -> None:
        for writer in getattr(self, "_writers", {}).values():
            writer.close()
