"""`MlflowSink`: the run as one MLflow run (mlflow-skinny's `MlflowClient`, no global state).

The tracking URI is always explicit (MLflow would otherwise pick `./mlruns` or `./mlflow.db` in the
current directory): `[monitor] report_dir` when it is a URI (`http://...`, `sqlite:///...`), a
file store in that directory when it is a path, else a file store in `<run>/mlflow/`. MLflow 3.7+
refuses file stores unless `MLFLOW_ALLOW_FILE_STORE` is set: this sink sets it for its process.

Params: the flattened resolved config (`section.key`, values cut to 500 characters). Metrics:
`<stage>/<name>` at the event's step. Alerts: `alerts.txt` (rewritten whole) and a tag counting
them; RL samples: `samples/<stage>/step-<step>.json`; each stage's latest metrics at its end:
`summary/<stage>.md` and the tag `dswb.stage.<stage>`. The MLflow run id is kept in
`<run>/mlflow_run.json`: a resumed dswb run continues the same MLflow run (same tracking URI only).
MLflow cannot drop logged points, so a continued run skips each metric's steps already in the store
(those trained again after the checkpoint; dswb's resume makes them bitwise the same numbers).

A file store keeps each metric in a file named after it, so one name cannot also be a folder of
others (PPO's `clip_ratio` beside `clip_ratio/low_mean`): there, the `/` inside a metric's own name
becomes `.` (`ppo/clip_ratio.low_mean`; `file_store_key`). Other stores keep the names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dswb.engine.telemetry.sinks.base import (SCALAR_KINDS, Sink, alert_text, flatten_config, scalars, stage_name,
                                              step_of, summary_text)
from dswb.util.atomic import write_atomic

RUN_ID_FILE = "mlflow_run.json"
EXPERIMENT = "dswb"
END_STATUS = {"finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}
BATCH = 100             # params per `log_batch` call (MLflow's limit)


def file_store_key(tag: str) -> str:
    """`<stage>/<name>` with the `/` inside `name` made `.`: no metric file is another's folder."""
    stage, _, name = tag.partition("/")
    return f"{stage}/{name.replace('/', '.')}" if name else tag


def tracking_uri(report_dir: str, run_dir: Path) -> str:
    """The explicit tracking URI for `[monitor] report_dir` (see the module docstring)."""
    if "://" in report_dir or report_dir.startswith(("sqlite:", "databricks")):
        return report_dir
    return Path(report_dir or run_dir / "mlflow").resolve().as_uri()


class MlflowSink(Sink):
    name = "mlflow"

    def _open(self) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow import MlflowClient

        base = self.report_dir()
        uri = tracking_uri(base, self.run_dir)
        if uri.startswith("file:"):
            Path(base or self.run_dir / "mlflow").mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        self.alerts: list[str] = []
        self.run_id = self._continued(uri) if self.continue_run else None
        self.continued = self.run_id is not None
        if self.run_id is None:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
            run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                         tags={"dswb.run_id": self.run_dir.name, "dswb.run_dir": str(self.run_dir)})
            self.run_id = run.info.run_id
            if self.continue_run:
                write_atomic(self.run_dir / RUN_ID_FILE, json.dumps({"tracking_uri": uri, "run_id": self.run_id}))
        else:   # an ended run given more events (`dswb eval RUN --tasks`) ends as it was, unless a run_end comes
            self.was = self.client.get_run(self.run_id).info.status
            self.client.update_run(self.run_id, status="RUNNING")
        self.where = f"{uri} (run {self.run_id})"
        self.key = file_store_key if uri.startswith("file:") else str
        self.logged: dict[str, int] = {}      # metric -> last step already in a continued run
        self._log_params()

    def _continued(self, uri: str) -> str | None:
        """The MLflow run of an earlier attempt of this dswb run, if it is in this store."""
        try:
            saved = json.loads((self.run_dir / RUN_ID_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("tracking_uri") != uri:
            return None
        try:
            return self.client.get_run(str(saved.get("run_id"))).info.run_id
        except Exception:   # deleted or unknown: start a new one
            return None

    def _log_params(self) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        params = [Param(k, v) for k, v in flatten_config(self.config).items() if k not in have]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])

    def _write(self, event: dict) -> None:
        from mlflow.entities import Metric

        kind, step, stage = event.get("kind"), step_of(event), stage_name(event)
        t = event.get("t")
        millis = int(t * 1000) if isinstance(t, (int, float)) else 0
        if kind == "stage_start" and self.continued:   # a new MLflow run holds no steps to skip
            self._read_logged(stage)
        if kind in SCALAR_KINDS:
            metrics = [Metric(key, value, millis, step) for key, value in ((self.key(t), v) for t, v in scalars(event))
                       if step > self.logged.get(key, -1)]
            if metrics:
                self.client.log_batch(self.run_id, metrics=metrics)
        elif kind == "alert":
            self.alerts.append(f"{stage} step {step} {alert_text(event)}")
            self.client.log_text(self.run_id, "\n".join(self.alerts) + "\n", "alerts.txt")
            self.client.set_tag(self.run_id, "dswb.alerts", str(len(self.alerts)))
        elif kind == "samples":
            self.client.log_dict(self.run_id, {"stage": stage, "step": step, "samples": event.get("samples")},
                                 f"samples/{stage}/step-{step}.json")
        elif kind == "stage_end":
            self.client.log_text(self.run_id, summary_text(stage, event.get("state"), self.last.get(stage, {})),
                                 f"summary/{stage}.md")
            self.client.set_tag(self.run_id, f"dswb.stage.{stage}", str(event.get("state")))

    def _read_logged(self, stage: str) -> None:
        """The last step of each of `stage`'s metrics already in this (continued) MLflow run."""
        for key in self.client.get_run(self.run_id).data.metrics:
            if key.startswith(f"{stage}/"):
                self.logged[key] = max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=-1)

    def _close(self) -> None:
        if getattr(self, "run_id", None) is not None:
            was = getattr(self, "was", None)
            before = was if was in END_STATUS.values() else "KILLED"
            self.client.set_terminated(self.run_id, status=END_STATUS.get(self.state or "", before))
