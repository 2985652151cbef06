"""W&B and trackio sinks: a tiny real run's events arrive in the tracker as in events.jsonl.

W&B through a recording stand-in for the `wandb` module (every number under `<stage>/<name>` with
its `<stage>/step`, config, samples table, stage summary, exit code, the resume naming and `note`),
plus one real offline run read back from its `.wandb` file; trackio for real, read back from its
SQLite store (live, resumed, exported). Nothing lands in the current directory or in ~.
"""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import struct
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.engine.telemetry.sinks import TrackioSink, WandbSink, export_events
from dswb.engine.telemetry.sinks.base import SCALAR_KINDS, scalars, stage_name
from dswb.engine.telemetry.sinks.trackio_sink import PROJECT, point_trackio_at
from dswb.rundir import read_events
from tests.helpers import run_in_process, tiny_config

pytest.importorskip("wandb")
pytest.importorskip("trackio")


@pytest.fixture(autouse=True)
def clean_cwd(tmp_path, monkeypatch):
    """No network, no writes to ~ or the cwd: HOME and wandb's own directories under tmp_path."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("WANDB_PROJECT", "WANDB_API_KEY", "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
        monkeypatch.delenv(var, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd


def scalar_rows(events: list[dict]) -> list[dict]:
    """What the W&B sink logs for the scalar events: `{<stage>/step: step, <stage>/<name>: value...}`."""
    rows = []
    for e in events:
        values = dict(scalars(e)) if e.get("kind") in SCALAR_KINDS else {}
        if values:
            rows.append({f"{stage_name(e)}/step": e["step"], **values})
    return rows


def series(events: list[dict], tag: str = "pretrain/loss") -> list[tuple[int, float]]:
    return [(e["step"], value) for e in events if e.get("kind") in SCALAR_KINDS
            for t, value in scalars(e) if t == tag]


# -- a recording stand-in for the wandb module -------------------------------------------------------
class FakeTable:
    def __init__(self, columns, data):
        self.columns, self.data = columns, data


class FakeRun:
    def __init__(self, module, kwargs):
        self.kwargs, self.module = kwargs, module
        self.id = kwargs.get("id") or f"fake{len(module.runs)}"
        earlier = [run.summary for run in module.runs if run.id == self.id]
        self.url = None
        self.settings = SimpleNamespace(sync_dir=str(Path(kwargs["dir"]) / "wandb" / f"offline-run-{self.id}"))
        self.defined, self.logs, self.alerts = [], [], []
        self.summary = dict(earlier[-1]) if earlier else {}    # W&B restores a resumed run's summary
        self.exit_code = "running"

    def define_metric(self, name, step_metric=None):
        self.defined.append((name, step_metric))

    def log(self, row, step=None):
        assert step is None
        self.logs.append(dict(row))
        self.summary.update(row)                                 # W&B's summary: each key's latest value

    def alert(self, **kwargs):
        self.alerts.append(kwargs)

    def finish(self, exit_code=None):
        self.exit_code = exit_code


def fake_wandb() -> types.ModuleType:
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)   # found by `validate_report_to`
    module.runs, module.teardowns = [], 0

    def init(**kwargs):
        module.runs.append(FakeRun(module, kwargs))
        return module.runs[-1]

    def teardown():
        module.teardowns += 1

    module.init, module.teardown, module.Table = init, teardown, FakeTable
    module.Settings = lambda **kwargs: kwargs
    module.AlertLevel = SimpleNamespace(WARN="WARN", ERROR="ERROR")
    return module


@pytest.fixture
def wandb_stub(monkeypatch):
    module = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_wandb_live_run_logs_every_number_per_stage_step(wandb_stub, tmp_path, clean_cwd):
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config('monitor.report_to=["wandb"]'), run_dir) == 0
    events = read_events(run_dir / "events.jsonl")
    assert not [e for e in events if e["kind"] == "alert" and e.get("code") == "sink_failed"]
    (run,) = wandb_stub.runs
    kw = run.kwargs
    assert (kw["project"], kw["name"], kw["group"], kw["mode"], kw["dir"]) == \
        ("dswb", run_dir.name, run_dir.name, "offline", str(run_dir))
    assert kw["config"] == [e for e in events if e["kind"] == "run_start"][-1]["config"]
    assert kw["settings"]["silent"] is True and kw["settings"]["console"] == "off"
    assert ("pretrain/step", None) in run.defined and ("pretrain/*", "pretrain/step") in run.defined
    assert run.logs == scalar_rows(events)
    assert len([r for r in run.logs if "pretrain/loss" in r]) == 12
    last_loss = series(events)[-1][1]
    assert run.summary["pretrain/loss"] == last_loss and run.summary["pretrain/state"] == "finished"
    assert run.exit_code == 0 and wandb_stub.teardowns == 1
    assert json.loads((run_dir / "wandb_run.json").read_text())["attempts"] == 1
    shutil.rmtree(run_dir / "final")                     # as if stopped after the step-8 checkpoint
    shutil.rmtree(run_dir / "checkpoints" / "pretrain" / "step-12")
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "stopped"}))
    assert run_in_process(tiny_config('monitor.report_to=["wandb"]'), run_dir, resume=True) == 0
    resumed = wandb_stub.runs[1]                         # offline: a new W&B run in the same group, said once
    assert (resumed.kwargs["name"], resumed.kwargs["group"]) == (f"{run_dir.name}-resume-1", run_dir.name)
    logs = [e["message"] for e in read_events(run_dir / "events.jsonl", ("log",)) if "-resume-1" in e["message"]]
    assert len(logs) == 1 and f"dswb runs export {run_dir.name} --to wandb" in logs[0]
    assert list(clean_cwd.iterdir()) == []


def test_wandb_samples_alerts_failure_and_offline_resume(wandb_stub, plain_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(plain_run, run_dir)
    events = read_events(run_dir / "events.jsonl")
    config = [e for e in events if e["kind"] == "run_start"][-1]["config"]
    extra = [{"kind": "samples", "stage": "grpo", "step": 3, "samples": [{"prompt": "1+1", "completion": "2",
                                                                          "reward": 1.0, "meta": {"k": 1}}]},
             {"kind": "alert", "stage": "grpo", "step": 4, "level": "warning", "code": "nan_loss", "message": "x"},
             {"kind": "run_end", "state": "failed"}]
    first, second = WandbSink(), WandbSink()
    export_events(first, run_dir, config, events[:-1] + extra)
    run = wandb_stub.runs[0]
    (samples,) = [r for r in run.logs if "grpo/samples" in r]
    assert samples["grpo/step"] == 3 and samples["grpo/samples"].columns == ["prompt", "completion", "reward", "meta"]
    assert samples["grpo/samples"].data == [["1+1", "2", 1.0, '{"k": 1}']]
    (alerts,) = [r for r in run.logs if "alerts" in r]
    assert alerts["alerts"].data == [["grpo", 4, "warning", "nan_loss", "x"]] and run.summary["alerts_count"] == 1
    assert run.alerts == []                               # run.alert is online only
    assert run.exit_code == 1 and first.note == ""
    export_events(second, run_dir, config, events)        # the same dswb run again: a resumed attempt
    resumed = wandb_stub.runs[1]
    assert resumed.kwargs["name"] == f"{run_dir.name}-resume-1" and resumed.kwargs["group"] == run_dir.name
    assert resumed.kwargs["id"] is None
    assert "-resume-1" in second.note and f"dswb runs export {run_dir.name} --to wandb" in second.note
    assert resumed.exit_code == 0


def test_wandb_online_resume_continues_the_run(wandb_stub, plain_run, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    run_dir = tmp_path / "run"
    shutil.copytree(plain_run, run_dir)
    events = read_events(run_dir / "events.jsonl")
    alert = {"kind": "alert", "stage": "pretrain", "step": 2, "level": "error", "code": "oom", "message": "m"}
    cut = next(i for i, e in enumerate(events) if e["kind"] == "metrics" and e["step"] == 8) + 1
    export_events(WandbSink(), run_dir, {}, events[:cut] + [alert])     # stopped after step 8
    export_events(WandbSink(), run_dir, {}, events)                      # resumed: steps 1-8 already there
    first, again = wandb_stub.runs
    assert again.kwargs["id"] == first.id and again.kwargs["resume"] == "allow" and again.kwargs["name"] == run_dir.name
    assert first.alerts == [{"title": "oom", "text": "pretrain step 2: m", "level": "ERROR"}]
    assert again.logs == [row for row in scalar_rows(events) if row["pretrain/step"] > 8]
    losses = [r["pretrain/loss"] for r in first.logs + again.logs if "pretrain/loss" in r]
    assert losses == [v for _, v in series(events)]


def wandb_records(path: Path):
    """The records of a `.wandb` file: a 7-byte header, then LevelDB-log chunks in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunks = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:               # a block's tail too short for a chunk header: padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):                        # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_wandb_real_offline_run(tmp_path, clean_cwd, capfd):
    run_dir = tmp_path / "run"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert run_in_process(tiny_config('monitor.report_to=["wandb"]'), run_dir) == 0
    events = read_events(run_dir / "events.jsonl")
    assert not [e for e in events if e["kind"] == "alert" and e.get("code") == "sink_failed"]
    out, err = capfd.readouterr()
    assert "wandb" not in (out + err).lower()             # silent: dswb's stdout is a progress display
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (store,) = offline.glob("run-*.wandb")
    assert list(clean_cwd.iterdir()) == []
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before    # wandb-core stopped
    history, exits = [], []
    for record in wandb_records(store):
        if record.WhichOneof("record_type") == "exit":
            exits.append(record.exit.exit_code)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    logged = [(h["pretrain/step"], h["pretrain/loss"]) for h in history if "pretrain/loss" in h]
    assert logged == series(events) and len(logged) == 12 and exits == [0]


def test_runs_export_to_wandb(plain_run, tmp_path, clean_cwd, monkeypatch):
    runs_root = plain_run.parent
    runner = CliRunner()
    start = time.perf_counter()
    result = runner.invoke(app, ["runs", "export", "latest", "--to", "wandb", "--runs-root", str(runs_root),
                                 "--out", str(tmp_path / "wb")])
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    (offline,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    assert str(offline) in result.output and "wandb sync" in result.output and seconds < 20
    assert not (plain_run / "wandb_run.json").exists()
    module = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", module)
    result = runner.invoke(app, ["runs", "export", "latest", "--to", "wandb", "--runs-root", str(runs_root)])
    assert result.exit_code == 0, result.output
    (run,) = module.runs
    assert run.kwargs["name"] == plain_run.name and run.kwargs["dir"] == str(plain_run)
    assert run.logs == scalar_rows(read_events(plain_run / "events.jsonl")) and run.exit_code == 0
    assert list(clean_cwd.iterdir()) == []


# -- trackio, for real -------------------------------------------------------------------------------
def trackio_logs(store: Path, run: str) -> list[dict]:
    from trackio.sqlite_storage import SQLiteStorage

    point_trackio_at(store.resolve())
    return SQLiteStorage.get_logs(PROJECT, run=run)


def trackio_series(logs: list[dict], tag: str = "pretrain/loss") -> list[tuple[int, float]]:
    return [(row["step"], row[tag]) for row in logs if tag in row]


def test_trackio_live_and_resumed_run(tmp_path, clean_cwd, capfd):
    from trackio.sqlite_storage import SQLiteStorage

    threads = threading.active_count()

    run_dir = tmp_path / "run"
    config = tiny_config('monitor.report_to=["trackio"]')
    assert run_in_process(config, run_dir) == 0
    events = read_events(run_dir / "events.jsonl")
    assert not [e for e in events if e["kind"] == "alert" and e.get("code") == "sink_failed"]
    logs = trackio_logs(run_dir / "trackio", run_dir.name)
    for row in scalar_rows(events):                      # every number, at its step
        stage_step = next(k for k in row if k.endswith("/step"))
        assert any(log["step"] == row[stage_step] and all(log.get(k) == v for k, v in row.items() if k != stage_step)
                   for log in logs), row
    assert trackio_series(logs) == series(events)
    assert any("pretrain/summary" in log for log in logs)
    assert SQLiteStorage.get_run_config(PROJECT, run_dir.name)["train"]["steps"] == 12
    out, err = capfd.readouterr()
    assert "trackio" not in (out + err).lower() and threading.active_count() == threads
    shutil.rmtree(run_dir / "final")                     # as if stopped after the step-8 checkpoint
    shutil.rmtree(run_dir / "checkpoints" / "pretrain" / "step-12")
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "stopped"}))
    assert run_in_process(config, run_dir, resume=True) == 0
    logs = trackio_logs(run_dir / "trackio", run_dir.name)
    assert [r["name"] for r in SQLiteStorage.get_run_records(PROJECT)] == [run_dir.name]
    assert trackio_series(logs) == series(events)[:12]     # steps 9-12 trained again: not logged twice
    assert list(clean_cwd.iterdir()) == []


def test_trackio_export_and_alerts(plain_run, tmp_path, clean_cwd):
    from trackio.sqlite_storage import SQLiteStorage

    out = tmp_path / "tk"
    result = CliRunner().invoke(app, ["runs", "export", str(plain_run), "--to", "trackio", "--out", str(out)])
    assert result.exit_code == 0, result.output
    events = read_events(plain_run / "events.jsonl")
    assert trackio_series(trackio_logs(out, plain_run.name)) == series(events)
    extra = [{"kind": "alert", "stage": "grpo", "step": 4, "level": "warning", "code": "nan_loss", "message": "x"},
             {"kind": "samples", "stage": "grpo", "step": 3, "samples": [{"prompt": "1+1", "reward": 1.0}]}]
    sink = TrackioSink(target=str(out), continue_run=False)
    export_events(sink, plain_run, {}, events + extra)
    name = f"{plain_run.name}-export-1"
    assert name in sink.where
    logs = trackio_logs(out, name)
    assert trackio_series(logs) == series(events)
    (samples,) = [log for log in logs if "grpo/samples" in log]
    assert samples["step"] == 3 and samples["grpo/samples"]["_value"] == [{"prompt": "1+1", "reward": 1.0}]
    alerts = [a for a in SQLiteStorage.get_alerts(PROJECT) if a["run"] == name]
    assert [(a["title"], a["step"], a["text"]) for a in alerts] == [("nan_loss", 4, "grpo step 4: x")]
    assert list(clean_cwd.iterdir()) == []
