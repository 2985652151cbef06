"""A whole pretraining run with `[parallel] mode = "layers"` over three CPU "devices" records the same
losses as the same run without a mapping, and its final model loads as usual."""

from __future__ import annotations

import pytest

from dswb.rundir import read_events, read_status
from helpers import run_in_process, tiny_config


def losses(run_dir):
    events = read_events(run_dir / "events.jsonl")
    return [e["metrics"]["loss"] for e in events if e["kind"] == "metrics"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pretraining_through_a_layer_mapping_matches_no_mapping(tmp_path):
    common = ["run.device=cpu", "train.steps=6", "checkpoint.every=3", "eval.task_samples=4"]
    plain = tmp_path / "plain"
    mapped = tmp_path / "mapped"
    assert run_in_process(tiny_config(*common), plain) == 0
    config = tiny_config(*common, "parallel.mode=layers", 'parallel.devices=["cpu","cpu","cpu"]',
                         'parallel.max_memory=["2GB"]')
    assert run_in_process(config, mapped) == 0
    assert read_status(mapped / "status.json")["state"] == "finished"
    assert losses(mapped) == losses(plain) and len(losses(plain)) == 6
    assert (mapped / "final" / "pretrain" / "model.safetensors").is_file()
