"""Tracker sinks (`[monitor] report_to`, `dswb runs export`): a tiny real run read back with
TensorBoard's and MLflow's own readers matches events.jsonl step for step; export after the fact
writes the same; a sink that fails mid-run is switched off with one alert and changes nothing in
training; nothing lands in the current directory; the pump never blocks the training thread."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.config.load import load_config
from dswb.engine.telemetry.sinks import Sink, SinkPump, TensorBoardSink
from dswb.engine.telemetry.sinks.base import scalars
from dswb.engine.telemetry.sinks.mlflow_sink import file_store_key
from dswb.errors import UserError
from dswb.rundir import read_events, read_status
from tests.helpers import run_in_process, tiny_config

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

from mlflow import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData  # noqa: E402

BOTH = 'monitor.report_to=["tensorboard","mlflow"]'


def loss_series(run_dir: Path) -> list[tuple[int, float]]:
    return [(e["step"], np.float32(e["metrics"]["loss"])) for e in read_events(run_dir / "events.jsonl", ("metrics",))]


def tb_series(logdir: Path, tag: str = "pretrain/loss") -> list[tuple[int, float]]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return [(s.step, np.float32(s.value)) for s in acc.Scalars(tag)]


def mlflow_series(uri: str, run_id: str, key: str = "pretrain/loss") -> list[tuple[int, float]]:
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)
    return sorted((m.step, np.float32(m.value)) for m in history)


def weights(run_dir: Path) -> bytes:
    return (run_dir / "final" / "pretrain" / "model.safetensors").read_bytes()


def test_live_sinks_match_events_jsonl_and_write_nothing_in_the_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config(BOTH), run_dir) == 0
    assert list(cwd.iterdir()) == []
    events = read_events(run_dir / "events.jsonl")
    assert not [e for e in events if e["kind"] == "alert" and e.get("code") == "sink_failed"]
    expected = loss_series(run_dir)
    assert len(expected) == 12
    assert tb_series(run_dir / "tensorboard" / "pretrain") == expected
    acc = EventAccumulator(str(run_dir / "tensorboard" / "pretrain"))
    acc.Reload()
    assert "pretrain/summary/text_summary" in acc.Tags()["tensors"]   # the stage_end summary
    top = EventAccumulator(str(run_dir / "tensorboard"))
    top.Reload()
    session = HParamsPluginData.FromString(top.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["train.steps"].number_value == 12 and hparams["model.size"].string_value == "tiny"
    assert hparams["monitor.report_to"].string_value == '["tensorboard", "mlflow"]'
    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    assert saved["tracking_uri"] == (run_dir / "mlflow").resolve().as_uri()
    assert mlflow_series(saved["tracking_uri"], saved["run_id"]) == expected
    run = MlflowClient(tracking_uri=saved["tracking_uri"]).get_run(saved["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "12"
    assert run.data.params["monitor.report_to"] == '["tensorboard", "mlflow"]'
    evals = [e for e in events if e["kind"] == "eval"]
    assert evals and all(f"pretrain/{k}" in run.data.metrics for k in evals[-1]["metrics"])
    assert run.data.metrics["pretrain/model.params"] == events[[e["kind"] for e in events].index("stage_start")][
        "model"]["params"]
    opened = [e["message"] for e in events if e["kind"] == "log" and "writing to" in e["message"]]
    assert sorted(opened) == [f"mlflow: writing to {saved['tracking_uri']} (run {saved['run_id']})",
                              f"tensorboard: writing to {run_dir / 'tensorboard'}"]


def test_moe_fp8_and_stage_sizes_become_scalars():
    moe = {"kind": "moe", "stage": "sft", "step": 20,
           "layers": [{"layer": 1, "tokens": 96, "load": [50, 46, 50, 46], "imbalance": 1.04, "entropy": 0.9,
                       "gate_mean": 0.5, "dead": 0, "bias": [0.25, -0.25, 0.5, -0.5]},
                      {"layer": 2, "tokens": 96, "imbalance": float("nan"), "entropy": 0.8, "gate_mean": 0.4,
                       "dead": 1, "bias": None}]}
    assert dict(scalars(moe)) == {
        "sft/moe/layer1/imbalance": 1.04, "sft/moe/layer1/entropy": 0.9, "sft/moe/layer1/dead": 0.0,
        "sft/moe/layer1/gate_mean": 0.5, "sft/moe/layer1/tokens": 96.0, "sft/moe/layer1/bias_abs": 0.375,
        "sft/moe/layer2/entropy": 0.8, "sft/moe/layer2/dead": 1.0, "sft/moe/layer2/gate_mean": 0.4,
        "sft/moe/layer2/tokens": 96.0}
    fp8 = {"kind": "fp8", "stage": "pretrain", "step": 10, "backend": "auto",
           "layers": {"mlp.up": {"amax": 3.1, "scale": 0.0069, "saturation_pct": 0.0, "underflow_pct": 0.02,
                                 "operands": {"input": {"amax": 3.1}}}},
           "shadow": {"fp8_loss": 1.726, "reference_loss": 1.725, "gap_pct": 0.06}}
    assert dict(scalars(fp8)) == {"pretrain/fp8/mlp.up/amax": 3.1, "pretrain/fp8/mlp.up/saturation_pct": 0.0,
                                  "pretrain/fp8/mlp.up/underflow_pct": 0.02, "pretrain/fp8/shadow_gap_pct": 0.06}
    start = {"kind": "stage_start", "stage": "dpo", "step": 0, "total_steps": 30,
             "model": {"params": 1000, "trainable": 24, "layers": 2, "adapter": {"r": 8}},
             "data": {"train_samples": 90, "val_samples": 10}}
    assert dict(scalars(start)) == {"dpo/model/params": 1000.0, "dpo/model/trainable": 24.0,
                                    "dpo/data/train_samples": 90.0, "dpo/data/val_samples": 10.0}
    assert dict(scalars({"kind": "moe", "stage": "x", "layers": "hostile"})) == {}


def test_runs_export_reproduces_the_series(plain_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = loss_series(plain_run)
    runner = CliRunner()
    result = runner.invoke(app, ["runs", "export", str(plain_run), "--to", "tensorboard"])
    assert result.exit_code == 0, result.output
    assert str(plain_run / "tensorboard") in result.output
    assert tb_series(plain_run / "tensorboard" / "pretrain") == expected
    again = runner.invoke(app, ["runs", "export", str(plain_run), "--to", "tensorboard"])
    assert again.exit_code == 2 and "--out" in again.output
    out = tmp_path / "mlstore"
    result = runner.invoke(app, ["runs", "export", str(plain_run), "--to", "mlflow", "--out", str(out)])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=out.resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("dswb").experiment_id])
    assert mlflow_series(out.resolve().as_uri(), run.info.run_id) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlstore"]
    bad = runner.invoke(app, ["runs", "export", str(plain_run), "--to", "comet"])
    assert bad.exit_code == 2 and "unknown tracker 'comet'" in bad.output


def test_a_failing_sink_is_switched_off_with_one_alert_and_changes_nothing(plain_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dl").mkdir()
    written = []
    real_write = TensorBoardSink._write

    def flaky(self, event):
        if len(written) >= 5:
            raise OSError("No space left on device")
        written.append(event)
        real_write(self, event)

    monkeypatch.setattr(TensorBoardSink, "_write", flaky)
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config(BOTH), run_dir) == 0
    assert read_status(run_dir / "status.json")["state"] == "finished"
    events = read_events(run_dir / "events.jsonl")
    failed = [e for e in events if e["kind"] == "alert" and e.get("code") == "sink_failed"]
    assert len(failed) == 1 and "tensorboard" in failed[0]["message"] and "No space left" in failed[0]["message"]
    assert events[-1]["kind"] == "run_end" and events.index(failed[0]) < len(events) - 1
    assert loss_series(run_dir) == loss_series(plain_run)   # events.jsonl complete
    assert weights(run_dir) == weights(plain_run)
    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])   # the other sink went on, and got the alert
    alerts = Path(client.download_artifacts(saved["run_id"], "alerts.txt", str(tmp_path / "dl")))
    assert "sink_failed" in alerts.read_text()


def test_a_resumed_run_continues_the_same_stores_without_duplicate_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config(BOTH), run_dir) == 0
    first = (run_dir / "mlflow_run.json").read_text()
    shutil.rmtree(run_dir / "final")                       # as if stopped after the step-8 checkpoint
    shutil.rmtree(run_dir / "checkpoints" / "pretrain" / "step-12")
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "stopped"}))
    assert run_in_process(tiny_config(BOTH), run_dir, resume=True) == 0
    assert (run_dir / "mlflow_run.json").read_text() == first
    metrics = read_events(run_dir / "events.jsonl", ("metrics",))
    assert [e["step"] for e in metrics] == list(range(1, 13)) + list(range(9, 13))   # trained again after step 8
    expected = loss_series(run_dir)[:12]
    assert loss_series(run_dir)[12:] == expected[8:]       # bitwise resume: the same numbers
    saved = json.loads(first)
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    assert len(client.search_runs([client.get_experiment_by_name("dswb").experiment_id])) == 1
    assert mlflow_series(saved["tracking_uri"], saved["run_id"]) == expected
    assert client.get_run(saved["run_id"]).info.status == "FINISHED"
    assert len(list((run_dir / "tensorboard" / "pretrain").glob("events.out.tfevents*"))) >= 2
    assert tb_series(run_dir / "tensorboard" / "pretrain") == expected   # the second file purged steps 9-12


def test_config_names_and_missing_libraries_are_one_line_errors(monkeypatch):
    with pytest.raises(UserError, match=r"monitor.report_to: unknown tracker 'comet' "
                                        r"\(known: tensorboard, mlflow, wandb, trackio\)"):
        load_config(None, ['monitor.report_to=["comet"]'])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r'needs mlflow: pip install -e "\.\[mlflow\]"'):
        load_config(None, ['monitor.report_to=["mlflow"]'])
    assert load_config(None, ['monitor.report_to=["tensorboard"]']).monitor.report_to == ["tensorboard"]


class Gate(Sink):
    """A sink whose writes wait for a gate: the queue fills up behind it."""
    name = "gate"

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.seen = threading.Event(), []

    def _open(self) -> None:
        pass

    def _write(self, event: dict) -> None:
        self.gate.wait(10)
        self.seen.append(event["step"])

    def _close(self) -> None:
        pass


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path):
    sink = Gate()
    pump = SinkPump([sink], tmp_path, {}, queue_size=4)
    start = time.perf_counter()
    for step in range(100):
        pump.put({"kind": "metrics", "stage": "s", "step": step, "metrics": {"loss": 1.0}})
    assert time.perf_counter() - start < 1.0
    assert 100 - 5 <= pump.dropped <= 100 - 4
    sink.gate.set()
    assert pump.flush(5)
    pump.close()
    assert len(sink.seen) == 100 - pump.dropped and sink.seen[0] == 0


@pytest.mark.slow
def test_the_demo_pipeline_is_readable_from_both_stores(tmp_path, monkeypatch):
    from tests.test_posttrain_stages import STAGE_SETTINGS

    monkeypatch.chdir(tmp_path)
    stages = ["pretrain", "sft", "rm", "ppo", "grpo"]   # the demo preset's stages, at the tests' tiny sizes
    overrides = [f"run.stages={json.dumps(stages)}", BOTH, *(s for stage in stages[1:] for s in STAGE_SETTINGS[stage])]
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config(*overrides), run_dir) == 0
    events = read_events(run_dir / "events.jsonl")
    assert not [e for e in events if e.get("code") == "sink_failed"]
    ppo_names = {k for e in events if e["kind"] == "metrics" and e["stage"] == "ppo" for k in e["metrics"]}
    assert "clip_ratio" in ppo_names and any(k.startswith("clip_ratio/") for k in ppo_names)   # file vs folder
    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    artifacts = {a.path for a in client.list_artifacts(saved["run_id"], "samples")}
    for stage in stages:
        mine = [e for e in events if e.get("stage") == stage]
        for kind in ("metrics", "eval"):
            last = [e for e in mine if e["kind"] == kind][-1]
            for name, value in last["metrics"].items():
                if isinstance(value, float):
                    expected = [(e["step"], np.float32(e["metrics"][name])) for e in mine
                                if e["kind"] == kind and isinstance(e["metrics"].get(name), float)]
                    assert tb_series(run_dir / "tensorboard" / stage, f"{stage}/{name}") == expected, (stage, name)
                    key = file_store_key(f"{stage}/{name}")
                    assert mlflow_series(saved["tracking_uri"], saved["run_id"], key) == expected, (stage, name)
        samples = [e for e in mine if e["kind"] == "samples"]
        assert bool(samples) == (stage in ("ppo", "grpo"))
        if samples:
            assert f"samples/{stage}" in artifacts
            acc = EventAccumulator(str(run_dir / "tensorboard" / stage))
            acc.Reload()
            assert len(acc.Tensors(f"{stage}/samples/text_summary")) == len(samples)
            shown = acc.Tensors(f"{stage}/samples/text_summary")[0].tensor_proto.string_val[0].decode()
            assert json.dumps(samples[0]["samples"][0]["completion"]) in shown
