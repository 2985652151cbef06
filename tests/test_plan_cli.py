"""`dswb plan`: a 70B model planned from its config.json alone, without torch; user errors exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dswb.cli.app import app

LLAMA_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
             "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
             "max_position_embeddings": 8192}


@pytest.fixture
def model_70b(tmp_path):
    directory = tmp_path / "llama-70b"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(LLAMA_70B))
    return directory


def plan(*args: str):
    return CliRunner().invoke(app, ["plan", *args])


def test_70b_does_not_fit_8_cards_for_training_and_the_plan_says_by_how_much(model_70b, tmp_path):
    out = tmp_path / "plan.json"
    result = plan("--set", f"model.path={model_70b}", "--set", "batching.max_tokens=4096", "--devices", "8",
                  "--memory", "80GB", "--json", str(out))
    assert result.exit_code == 1, result.output
    assert "70.6 B parameters" in result.output and "80 blocks" in result.output
    assert "does not fit: needs" in result.output and "the 8 devices offer 596.0 GiB" in result.output
    assert "it fits on" in result.output and "with activation checkpointing" in result.output
    data = json.loads(out.read_text())
    assert data["fits"] is False and len(data["devices"]) == 8
    assert data["model"]["params"] == 70_553_706_496
    assert data["devices"][0]["units"][0] == "model.embed_tokens" and data["devices"][-1]["units"][-1] == "lm_head"
    assert len(data["split_points"]) == 7


def test_70b_fits_on_enough_cards_with_checkpointing_and_bf16_moments(model_70b):
    result = plan("--set", f"model.path={model_70b}", "--set", "batching.max_tokens=4096",
                  "--set", "parallel.activation_checkpointing=true", "--optimizer-state", "bf16",
                  "--devices", "16", "--memory", "80GB")
    assert result.exit_code == 0, result.output
    assert "fits: " in result.output and "balanced by memory" in result.output
    assert "layers 0-" in result.output and "norm, head" in result.output


def test_devices_and_memory_from_the_config(model_70b):
    result = plan("--set", f"model.path={model_70b}", "--set", "parallel.mode=layers",
                  "--set", 'parallel.devices=["cuda:0","cuda:1","cuda:2","cuda:3"]',
                  "--set", 'parallel.max_memory=["141GB"]', "--set", "run.device=cuda")
    assert "cuda:3" in result.output and "4 devices" in result.output, result.output


@pytest.mark.parametrize("args,needle", [
    (["--devices", "2", "--memory", "80 gigs"], "--memory: '80 gigs' is not a memory size"),
    (["--devices", "81", "--memory", "80GB"], "--devices: 81 devices but the model has only 80 decoder blocks"),
    (["--devices", "2"], "--devices 2: give the memory of each device with --memory"),
    (["--devices", "2", "--memory", "80GB", "--optimizer-state", "fp16"], "--optimizer-state: 'fp16'"),
])
def test_user_errors_are_one_line_and_exit_2(model_70b, args, needle):
    result = plan("--set", f"model.path={model_70b}", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


def test_a_model_directory_without_config_json_is_a_user_error(tmp_path):
    result = plan("--set", f"model.path={tmp_path}", "--devices", "2", "--memory", "80GB")
    assert result.exit_code == 2 and f"model.path: {tmp_path} has no config.json" in result.output


def test_planning_imports_no_torch(model_70b):
    probe = f"""
import sys
sys.argv = ["dswb", "plan", "--set", "model.path={model_70b}", "--devices", "8", "--memory", "80GB"]
from dswb.cli.app import main
try:
    main()
except SystemExit:
    pass
print("torch" in sys.modules, "transformers" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stdout + out.stderr
    assert "does not fit" in out.stdout
