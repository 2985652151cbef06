"""Checkpoint and final-model integrity: manifests, verification on load, fallback to the newest
checkpoint that verifies, `dswb runs verify`, and checkpoints written before manifests existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.engine.checkpoint.io import load_checkpoint
from dswb.engine.checkpoint.layout import CorruptCheckpoint, latest_checkpoint, list_checkpoints
from dswb.rundir import read_events, read_status
from dswb.rundir.manifest import MANIFEST, verify_dir, verify_run, write_manifest
from tests.helpers import run_in_process, tiny_config
from tests.test_resume_faults import StopAtStep

runner = CliRunner()
CFG = ("train.steps=12", "checkpoint.every=4", "checkpoint.keep_last=3")


def flip_bytes(path: Path, n: int = 1000) -> None:
    """Flip `n` bytes in the middle of a file, as a failing disk would (size unchanged)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "final" / "pretrain" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].equal(b[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert run_in_process(tiny_config(*CFG), run_dir) == 0
    return weights(run_dir)


def stopped_at_9(run_dir: Path) -> None:
    """A run stopped at step 9: checkpoints 4, 8 and 9 (all with manifests)."""
    assert run_in_process(tiny_config(*CFG), run_dir, reporter=StopAtStep(run_dir, 9)) == 130
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints" / "pretrain")] == [4, 8, 9]


def test_manifest_lists_every_file_and_names_each_kind_of_damage(tmp_path):
    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"w" * 5000)
    (d / "sidecar.json").write_text('{"a": 1}')
    (d / "sub" / "value_head.bin").write_bytes(b"v" * 100)
    manifest = write_manifest(d)
    assert sorted(manifest["files"]) == ["model.safetensors", "sidecar.json", "sub/value_head.bin"]
    assert verify_dir(d).status == "ok"

    flip_bytes(d / "model.safetensors", 10)
    (d / "sidecar.json").write_text('{"a": 2, "b": 3}')
    (d / "sub" / "value_head.bin").unlink()
    (d / "added.txt").write_text("x")
    result = verify_dir(d)
    assert result.status == "mismatch" and not result.ok
    assert result.problems == [
        "model.safetensors: checksum mismatch",
        "sidecar.json: size 16 bytes, manifest says 8",
        "sub/value_head.bin: missing",
        "added.txt: not in the manifest (added after the directory was written)",
    ]
    (d / MANIFEST).write_text("{not json")
    assert verify_dir(d).problems == [f"{MANIFEST} unreadable (JSONDecodeError)"]
    (d / MANIFEST).unlink()
    assert verify_dir(d).status == "unverified" and verify_dir(d).ok


def test_checkpoints_and_final_models_carry_a_manifest_that_verifies(tmp_path):
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config(*CFG), run_dir) == 0
    results = {str(r.path.relative_to(run_dir)): r for r in verify_run(run_dir)}
    assert set(results) == {"checkpoints/pretrain/step-4", "checkpoints/pretrain/step-8",
                            "checkpoints/pretrain/step-12", "final/pretrain"}
    assert all(r.status == "ok" for r in results.values())
    manifest = json.loads((run_dir / "checkpoints/pretrain/step-12" / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"}
    assert "config.json" in json.loads((run_dir / "final/pretrain" / MANIFEST).read_text())["files"]


@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_caught_and_resume_falls_back_bitwise(tmp_path, reference):
    run_dir = tmp_path / "run"
    stopped_at_9(run_dir)
    ckpt_dir = run_dir / "checkpoints" / "pretrain"
    flip_bytes(ckpt_dir / "step-9" / "model.safetensors")

    verified = runner.invoke(app, ["runs", "verify", str(run_dir)])
    assert verified.exit_code == 1, verified.output
    assert "checkpoints/pretrain/step-9: model.safetensors: checksum mismatch" in verified.output
    with pytest.raises(CorruptCheckpoint, match="model.safetensors: checksum mismatch"):
        # Verification comes before any byte is loaded, so the model passed does not matter.
        load_checkpoint(latest_checkpoint(ckpt_dir), torch.nn.Linear(1, 1), None, torch.device("cpu"))

    assert run_in_process(tiny_config(*CFG), run_dir, resume=True) == 0
    alerts = read_events(run_dir / "events.jsonl", ("alert",))
    assert [a["code"] for a in alerts] == ["checkpoint_corrupt"]
    assert "step-9" in alerts[0]["message"] and "model.safetensors: checksum mismatch" in alerts[0]["message"]
    logs = [e["message"] for e in read_events(run_dir / "events.jsonl", ("log",))]
    assert "falling back to step-8, the newest checkpoint that verifies" in logs
    assert read_events(run_dir / "events.jsonl", ("stage_start",))[-1]["step"] == 8
    assert (ckpt_dir / "corrupt-step-9").is_dir()
    assert_same_weights(weights(run_dir), reference)   # nothing lost but the replayed step

    verified = runner.invoke(app, ["runs", "verify", str(run_dir)])
    assert verified.exit_code == 0, verified.output
    assert "set aside, not checked: checkpoints/pretrain/corrupt-step-9 (failed verification earlier)" in verified.output


@pytest.mark.slow
def test_checkpoint_without_manifest_still_loads_with_a_warning(tmp_path, reference):
    run_dir = tmp_path / "run"
    stopped_at_9(run_dir)
    (run_dir / "checkpoints" / "pretrain" / "step-9" / MANIFEST).unlink()   # as written before manifests
    assert run_in_process(tiny_config(*CFG), run_dir, resume=True) == 0
    logs = [e for e in read_events(run_dir / "events.jsonl", ("log",)) if e["level"] == "warning"]
    assert any("step-9 has no manifest" in e["message"] for e in logs)
    assert not read_events(run_dir / "events.jsonl", ("alert",))
    assert_same_weights(weights(run_dir), reference)


@pytest.mark.slow
def test_every_checkpoint_corrupt_fails_in_one_line_and_moves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    stopped_at_9(run_dir)
    for ckpt in list_checkpoints(run_dir / "checkpoints" / "pretrain"):
        flip_bytes(ckpt.path / "optimizer.pt", 50)
    (run_dir / "checkpoints" / "pretrain" / "step-9" / "optimizer.pt").unlink()   # a file lost outright
    assert run_in_process(tiny_config(*CFG), run_dir, resume=True) == 1
    status = read_status(run_dir / "status.json")
    assert status["state"] == "failed"
    assert status["error"].startswith("every checkpoint of stage pretrain failed verification (newest: ")
    assert "step-9: optimizer.pt: missing" in status["error"] and "\n" not in status["error"]
    alerts = read_events(run_dir / "events.jsonl", ("alert",))
    assert alerts == []   # nothing was moved aside: there is nothing to fall back to
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints" / "pretrain")] == [4, 8, 9]


@pytest.mark.slow
def test_corrupt_final_model_is_moved_aside_and_rewritten_on_resume(tmp_path, reference):
    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config(*CFG), run_dir) == 0
    flip_bytes(run_dir / "final" / "pretrain" / "model.safetensors")
    assert runner.invoke(app, ["runs", "verify", str(run_dir)]).exit_code == 1
    assert run_in_process(tiny_config(*CFG), run_dir, resume=True) == 0
    alerts = read_events(run_dir / "events.jsonl", ("alert",))
    assert [a["code"] for a in alerts] == ["final_corrupt"]
    assert (run_dir / "final" / "corrupt-pretrain").is_dir()
    assert_same_weights(weights(run_dir), reference)
    assert runner.invoke(app, ["runs", "verify", str(run_dir)]).exit_code == 0
