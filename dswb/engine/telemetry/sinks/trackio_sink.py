"""`TrackioSink`: the run as one trackio run in a local trackio store (never the Hub, never a server).

Store: `<run>/trackio/` (or `[monitor] report_dir`), a SQLite database per project (`dswb.db`);
view it with `TRACKIO_DIR=<store> trackio show --project dswb`. trackio reads `TRACKIO_DIR` once,
when imported: see `point_trackio_at`. Project `dswb`, run name = the dswb run id, config = the
resolved config; no Space, no server URL, no dashboard, no CPU/GPU auto-logging (dswb's `system`
events are the system metrics), and trackio's console messages are silenced.

Metrics: `<stage>/<name>` at the event's step (trackio keeps each key's series apart, so steps that
restart at a new stage are fine). Alerts: trackio alerts (title = code, text = stage, step and
message); RL samples: a `trackio.Table` under `<stage>/samples`; at a stage's end a
`trackio.Markdown` `<stage>/summary` of its latest metrics and state. A resumed dswb run continues
the trackio run of the same name (`resume="allow"`), skipping each key's steps already in it (those
trained again after the checkpoint); an export makes a new run (`<run id>`, or `<run id>-export-<n>`
if the store already has that name).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dswb.engine.telemetry.sinks.base import SCALAR_KINDS, Sink, rows_of, scalars, stage_name, step_of, summary_text

PROJECT = "dswb"


def _quiet(*args, **kwargs) -> None:
    pass


def import_trackio(store: Path):
    """trackio, writing to `store`, with its bare `print`s silenced (see `point_trackio_at`)."""
    if "trackio" not in sys.modules:
        before = os.environ.get("TRACKIO_DIR")
        os.environ["TRACKIO_DIR"] = str(store)
        try:
            import trackio
        finally:
            if before is None:
                os.environ.pop("TRACKIO_DIR", None)
            else:
                os.environ["TRACKIO_DIR"] = before
    import trackio

    point_trackio_at(store)
    return trackio


def point_trackio_at(store: Path) -> None:
    """Make an imported trackio write to `store`.

    trackio 0.43 computes `TRACKIO_DIR` (and `MEDIA_DIR`, `ARTIFACTS_DIR` under it) once in
    `trackio.utils`, and several of its modules copy them at import (`from trackio.utils import
    TRACKIO_DIR`); the storage paths are derived from these at call time. So every loaded trackio
    module's copy that still holds the old value is re-pointed; modules imported later copy the new
    one. trackio also prints with bare `print()` and has no quiet switch: a module-level `print`
    in each of its modules shadows the builtin without touching `sys.stdout` (other threads print).
    """
    import trackio.utils as tu

    old = {"TRACKIO_DIR": tu.TRACKIO_DIR, "MEDIA_DIR": tu.MEDIA_DIR, "ARTIFACTS_DIR": tu.ARTIFACTS_DIR}
    new = {"TRACKIO_DIR": store, "MEDIA_DIR": store / "media", "ARTIFACTS_DIR": store / "artifacts"}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "trackio" or name.startswith("trackio.")):
            continue
        for attr, value in old.items():
            if getattr(module, attr, None) == value:
                setattr(module, attr, new[attr])
        module.print = _quiet


class TrackioSink(Sink):
    name = "trackio"

    def _open(self) -> None:
        self.store = Path(self.report_dir() or self.run_dir / "trackio").resolve()
        self.store.mkdir(parents=True, exist_ok=True)
        trackio = self.trackio = import_trackio(self.store)
        from trackio.sqlite_storage import SQLiteStorage

        name = self.run_dir.name
        self.logged: dict[str, int] = {}        # key -> last step already in the continued run
        if self.continue_run and name in SQLiteStorage.get_runs(PROJECT):
            for row in SQLiteStorage.get_logs(PROJECT, run=name):
                for key in row.keys() - {"step", "timestamp"}:
                    self.logged[key] = max(self.logged.get(key, -1), row["step"])
        else:
            taken = set(SQLiteStorage.get_runs(PROJECT))
            n = 1
            while name in taken:
                name, n = f"{self.run_dir.name}-export-{n}", n + 1
        self.run = trackio.init(project=PROJECT, name=name, group=self.run_dir.name, config=self.config,
                                resume="allow" if self.continue_run else "never", embed=False,
                                auto_log_cpu=False, auto_log_gpu=False)
        self.where = f"{self.store} (project {PROJECT}, run {name}; TRACKIO_DIR={self.store} trackio show)"

    def _log(self, values: dict, step: int) -> None:
        values = {key: value for key, value in values.items() if step > self.logged.get(key, -1)}
        if values:
            self.run.log(values, step=step)

    def _write(self, event: dict) -> None:
        kind, step, stage = event.get("kind"), step_of(event), stage_name(event)
        if kind in SCALAR_KINDS:
            self._log(dict(scalars(event)), step)
        elif kind == "alert":
            level = self.trackio.AlertLevel.ERROR if event.get("level") == "error" else self.trackio.AlertLevel.WARN
            self.run.alert(str(event.get("code", "?")), text=f"{stage} step {step}: {event.get('message', '')}",
                           level=level, step=step)
        elif kind == "samples":
            columns, rows = rows_of(event.get("samples"))
            if columns:
                self._log({f"{stage}/samples": self.trackio.Table(columns=columns, data=rows)}, step)
        elif kind == "stage_end":
            text = summary_text(stage, event.get("state"), self.last.get(stage, {}))
            self._log({f"{stage}/summary": self.trackio.Markdown(text)}, step)

    def _close(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            self.run = None
            point_trackio_at(self.store)   # another sink may have re-pointed trackio since `open`
            run.finish()
