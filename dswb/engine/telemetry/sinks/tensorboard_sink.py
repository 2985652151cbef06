"""`TensorBoardSink`: the run as TensorBoard event files (`torch.utils.tensorboard.SummaryWriter`).

Written to `<run>/tensorboard/` (or `<report_dir>/<run id>/`): a scalar per number of `metrics`,
`eval` and `system` events (`<stage>/<name>` at the event's step), alerts as text under
`<stage>/alerts`, RL samples as text under `<stage>/samples`, the resolved config as text
(`config`, at `run_start`) and a Markdown summary of each stage's latest metrics at its `stage_end`
(`<stage>/summary`). A resumed run adds a new event file to the same directory: TensorBoard shows
both, so steps trained again after the last checkpoint appear twice.
"""

from __future__ import annotations

from pathlib import Path

from dswb.engine.telemetry.sinks.base import Sink, alert_text, dumps, scalars, stage_name, step_of, summary_text

SAMPLES_SHOWN = 8       # RL samples per `samples` event written as text


class TensorBoardSink(Sink):
    name = "tensorboard"

    def _open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        base = self.report_dir()
        logdir = self.run_dir / "tensorboard" if not base else Path(base) / self.run_dir.name
        self.where = str(logdir)
        self._writer = SummaryWriter(log_dir=str(logdir), flush_secs=10)

    def _write(self, event: dict) -> None:
        w, kind, step = self._writer, event.get("kind"), step_of(event)
        stage = stage_name(event)
        wall = event.get("t") if isinstance(event.get("t"), (int, float)) else None
        if kind in ("metrics", "eval", "system"):
            for tag, value in scalars(event):
                w.add_scalar(tag, value, step, walltime=wall)
        elif kind == "alert":
            w.add_text(f"{stage}/alerts", alert_text(event), step, walltime=wall)
        elif kind == "samples":
            rows = event.get("samples") or []
            w.add_text(f"{stage}/samples", "```\n" + dumps(rows[:SAMPLES_SHOWN]) + "\n```", step, walltime=wall)
        elif kind == "run_start" and isinstance(event.get("config"), dict):
            w.add_text("config", "```\n" + dumps(event["config"]) + "\n```", 0, walltime=wall)
        elif kind == "stage_end":
            w.add_text(f"{stage}/summary", summary_text(stage, event.get("state"), self.last.get(stage, {})),
                       step, walltime=wall)
            w.flush()

    def _close(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()
