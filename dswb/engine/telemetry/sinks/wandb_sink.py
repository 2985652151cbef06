"""`WandbSink`: the run as one Weights & Biases run (a `wandb.init` run object, offline by default).

Mode: `offline` unless `WANDB_MODE` is set (`online` uploads as it goes, with the user's login).
Store: wandb's `dir` is the run directory (or `[monitor] report_dir`), so the offline run lands in
`<run>/wandb/offline-run-<time>-<id>/` (`wandb sync` that directory to upload it); never the
current directory. Project `dswb` (`WANDB_PROJECT` wins), name and group = the dswb run id, config =
the resolved config. wandb's console capture, system stats and messages are off (dswb's stdout is a
progress display) and `close` stops its `wandb-core` service process.

Metrics: dswb's steps restart at each stage and W&B drops a `log(step=...)` below the run's current
step, so each stage gets its own step metric: `<stage>/*` is plotted against `<stage>/step`, logged
with every event's numbers. Alerts: the table `alerts` (stage, step, level, code, message), logged
again with each new one (count: summary `alerts_count`), plus `run.alert` when online; RL samples:
the table `<stage>/samples`; at a stage's end the summary keys `<stage>/<metric>` (latest value) and
`<stage>/state`; `run_end` sets the exit code (0 for `finished`). `<run>/wandb_run.json` keeps the
W&B run id and mode: a resumed online run continues the same W&B run, skipping each stage's steps
up to its last `<stage>/step` in the run's summary (trained again after the checkpoint); offline
runs cannot be resumed (wandb issue 4624), so a resumed dswb run becomes a new W&B run
`<run id>-resume-<n>` in the same group, said in `note`.
"""

from __future__ import annotations

import json
import os

from dswb.engine.telemetry.sinks.base import SCALAR_KINDS, Sink, rows_of, scalars, stage_name, step_of
from dswb.util.atomic import write_atomic

RUN_ID_FILE = "wandb_run.json"
PROJECT = "dswb"
ALERT_COLUMNS = ["stage", "step", "level", "code", "message"]


def wandb_mode() -> str:
    """The user's `WANDB_MODE`, else offline: nothing leaves the machine unless asked for."""
    return os.environ.get("WANDB_MODE") or "offline"


class WandbSink(Sink):
    name = "wandb"

    def _open(self) -> None:
        import wandb

        self.wandb = wandb
        self.mode = wandb_mode()
        self.alerts: list[list] = []
        self.stages: dict[str, float] = {}     # stage -> last step already in a continued run (else -1)
        run_id = self.run_dir.name
        base = self.report_dir() or str(self.run_dir)
        saved = self._saved() if self.continue_run else {}
        attempts = int(saved.get("attempts", 0)) if saved.get("dir") == base else 0
        name, resume_id = run_id, None
        if attempts and self.mode == "online" and saved.get("mode") == "online":
            resume_id = saved.get("run_id")
        elif attempts:
            name = f"{run_id}-resume-{attempts}"
            self.note = (f"W&B offline runs cannot be resumed: this attempt is the new W&B run {name} in group "
                         f"{run_id}; `dswb runs export {run_id} --to wandb` makes one clean W&B run of it all")
        os.makedirs(base, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, save_code=False,
                                  reinit="create_new")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, name=name, group=run_id,
                              config=self.config, dir=base, mode=self.mode, id=resume_id,
                              resume="allow" if resume_id else None, settings=settings)
        self.resumed = resume_id is not None
        if self.continue_run:
            write_atomic(self.run_dir / RUN_ID_FILE, json.dumps(
                {"mode": self.mode, "dir": base, "run_id": self.run.id, "attempts": attempts + 1}))
        sync_dir = getattr(self.run.settings, "sync_dir", "") or ""
        online = self.mode == "online"
        self.where = (self.run.url or sync_dir) if online else f"{sync_dir} (upload: wandb sync {sync_dir})"

    def _saved(self) -> dict:
        try:
            saved = json.loads((self.run_dir / RUN_ID_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    def _step_metric(self, prefix: str) -> str:
        if prefix not in self.stages:
            done = self.run.summary.get(f"{prefix}/step") if self.resumed else None
            self.stages[prefix] = done if isinstance(done, (int, float)) else -1
            self.run.define_metric(f"{prefix}/step")
            self.run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step")
        return f"{prefix}/step"

    def _write(self, event: dict) -> None:
        kind, step, stage = event.get("kind"), step_of(event), stage_name(event)
        if kind in SCALAR_KINDS:
            by_prefix: dict[str, dict] = {}
            for tag, value in scalars(event):
                prefix = tag.split("/", 1)[0]
                by_prefix.setdefault(prefix, {self._step_metric(prefix): step})[tag] = value
            for prefix, row in by_prefix.items():
                if step > self.stages[prefix]:
                    self.run.log(row)
        elif kind == "alert":
            level, code, message = str(event.get("level", "warning")), str(event.get("code", "?")), \
                str(event.get("message", ""))
            self.alerts.append([stage, step, level, code, message])
            self.run.log({"alerts": self.wandb.Table(columns=ALERT_COLUMNS, data=[list(r) for r in self.alerts])})
            self.run.summary["alerts_count"] = len(self.alerts)
            if self.mode == "online":
                alert_level = self.wandb.AlertLevel.ERROR if level == "error" else self.wandb.AlertLevel.WARN
                self.run.alert(title=code, text=f"{stage} step {step}: {message}", level=alert_level)
        elif kind == "samples":
            columns, rows = rows_of(event.get("samples"))
            step_key = self._step_metric(stage)
            if columns and step > self.stages[stage]:
                self.run.log({step_key: step, f"{stage}/samples": self.wandb.Table(columns=columns, data=rows)})
        elif kind == "stage_end":
            for metric, value in self.last.get(stage, {}).items():
                self.run.summary[f"{stage}/{metric}"] = value
            self.run.summary[f"{stage}/state"] = str(event.get("state"))

    def _close(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            self.run = None
            run.finish(exit_code=0 if self.state == "finished" else 1)
        if getattr(self, "wandb", None) is not None:
            self.wandb.teardown()    # stops the wandb-core service process
