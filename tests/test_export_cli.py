"""LoRA adapters from the shell and the dashboard: `dswb export ... --merge OUT` on a real tiny peft adapter
(no training), the adapter lines of `dswb runs show`, and the stage header's `trainable X of Y`."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.rundir import EventWriter, RunPaths, create_run_dir, write_status

os.environ.setdefault("HF_HUB_OFFLINE", "1")
runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")   # peft under newer transformers


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --- dswb export --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """(base dir, adapter dir, the peft model it was saved from): a tiny Llama and a perturbed LoRA."""
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dswb.engine.data.records.tokenizer import build_char_tokenizer

    tmp = tmp_path_factory.mktemp("lora")
    base, adapter_dir = tmp / "base", tmp / "adapter"
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=32, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(base, safe_serialization=True)
    tokenizer = build_char_tokenizer("0123456789+=")
    tokenizer.save_pretrained(base)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear")).eval()
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)     # a zero B is a no-op adapter: the merge would prove nothing
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    config_path = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = str(base)
    config_path.write_text(json.dumps(adapter_config))
    tokenizer.save_pretrained(adapter_dir)
    (adapter_dir / "dswb_stage.json").write_text(json.dumps({"stage": "sft", "adapter": {"base": str(base)}}))
    return base, adapter_dir, peft_model


def logits_of(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


def test_export_merge_writes_the_merged_model(adapter, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    base, adapter_dir, peft_model = adapter
    out = tmp_path / "out"
    result = invoke("export", adapter_dir, "--merge", out)
    assert result.exit_code == 0, result.output
    assert f"wrote    {out}" in result.stdout and "AutoModelForCausalLM.from_pretrained" in result.stdout
    assert not (out / "adapter_config.json").exists() and (out / "dswb_manifest.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 6, 14, 7, 8, 15, 9]])
    plain = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=torch.float32).eval()
    assert not torch.allclose(logits_of(plain, ids), logits_of(peft_model, ids), atol=1e-3)  # the adapter matters
    torch.testing.assert_close(logits_of(merged, ids), logits_of(peft_model, ids), atol=1e-5, rtol=0)
    info = json.loads((out / "dswb_stage.json").read_text())
    assert "adapter" not in info and info["merged_from"]["base"] == str(base)

    again = one_error_line(invoke("export", adapter_dir, "--merge", out))
    assert f"--merge {out}" in again and "not empty" in again


def test_export_refuses_a_full_model_and_a_place_inside_the_adapter(adapter, tmp_path):
    base, adapter_dir, _ = adapter
    line = one_error_line(invoke("export", base, "--merge", tmp_path / "out"))
    assert str(base) in line and "already a full model" in line
    line = one_error_line(invoke("export", adapter_dir, "--merge", adapter_dir / "merged"))
    assert "inside the adapter directory" in line
    assert not (tmp_path / "out").exists() and not (adapter_dir / "merged").exists()


def test_export_needs_merge_and_an_existing_run(tmp_path):
    line = one_error_line(invoke("export", "latest:sft"))
    assert "--merge OUT is required" in line
    runs = tmp_path / "runs"
    line = one_error_line(invoke("export", "nope", "--merge", tmp_path / "out", "--runs-root", runs))
    assert "no run 'nope'" in line
    make_run(runs, "20250101-120000-a")
    line = one_error_line(invoke("export", "a:dpo", "--merge", tmp_path / "out", "--runs-root", runs))
    assert "no final 'dpo' model" in line and "finished: pretrain, sft" in line
    line = one_error_line(invoke("export", "a:pretrain", "--merge", tmp_path / "out", "--runs-root", runs))
    assert "already a full model" in line


# --- dswb runs show ------------------------------------------------------------------------------

def make_run(root: Path, run_id: str, merged: bool = False) -> RunPaths:
    """A finished two-stage run: pretrain in full, then SFT with a LoRA adapter on final/pretrain."""
    paths = create_run_dir(root / run_id)
    paths.config.write_text('[run]\nname = "test"\n')
    events = EventWriter(paths.events)
    events.emit("run_start", None, 0, run_id=run_id, config={}, argv=[], resumed=False)
    events.emit("stage_start", "pretrain", 0, total_steps=2, model={"params": 1_300_000}, data={})
    events.emit("metrics", "pretrain", 2, metrics={"loss": 2.0})
    events.emit("stage_end", "pretrain", 2, state="finished")
    events.emit("stage_start", "sft", 0, total_steps=2, model={"params": 1_300_000, "trainable": 20_000}, data={})
    events.emit("metrics", "sft", 2, metrics={"loss": 1.0, "adapter_norm": 0.25})
    events.emit("stage_end", "sft", 2, state="finished")
    events.emit("run_end", None, 2, state="finished", error=None)
    events.close()
    write_status(paths.status, {"state": "finished", "pid": 999_999_999, "host": socket.gethostname(),
                                "run_id": run_id, "stage": "sft", "stages": ["pretrain", "sft"], "step": 2,
                                "total_steps": 2, "started": time.time() - 60, "error": None})
    pretrain, sft = paths.final("pretrain"), paths.final("sft")
    pretrain.mkdir(parents=True)
    (pretrain / "config.json").write_text("{}")
    sft.mkdir(parents=True)
    (sft / "adapter_config.json").write_text("{}")
    (sft / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
    record = {"base": str(pretrain), "base_fingerprint": "x", "continued": None, "chain": "continue", "r": 16,
              "alpha": 32.0, "quantize": "none", "target_modules": ["all-linear"], "merge_final": merged}
    (sft / "dswb_stage.json").write_text(json.dumps({"stage": "sft", "adapter": record}))
    if merged:
        (sft / "merged").mkdir()
        (sft / "merged" / "config.json").write_text("{}")
    return paths


def test_runs_show_names_the_adapter_stages(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "20250101-120000-a")
    result = invoke("runs", "show", "a", "--runs-root", root)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("adapter ")]
    assert lines == ["adapter      sft: LoRA r=16 alpha=32 on final/pretrain (adapter, 2.0 KiB)"]
    assert "dswb export 20250101-120000-a:sft --merge DIR" in result.stdout
    assert "adapter_norm" in result.stdout                      # a metric like any other in the statistics
    data = json.loads(invoke("runs", "show", "a", "--runs-root", root, "--json").stdout)
    assert [(a["stage"], a["r"], a["size"], a["merged"]) for a in data["adapters"]] == [("sft", 16, 2048, False)]


def test_runs_show_says_where_the_merged_model_is(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "20250101-120000-a", merged=True)
    out = invoke("runs", "show", "a", "--runs-root", root).stdout
    assert "(adapter, 2.0 KiB; merged model in final/sft/merged)" in out
    assert "dswb export" not in out


# --- the dashboard's stage header ----------------------------------------------------------------

@pytest.mark.parametrize("model, text", [
    ({"params": 124_000_000, "trainable": 590_000}, "trainable 590k of 124M (0.48%)"),
    ({"params": 1_000, "trainable": 250}, "trainable 250 of 1000 (25%)"),
    ({"params": 1_300_000, "trainable": 1_300_000}, ""),                 # a stage training every weight
    ({"params": 1_300_000}, ""),                                          # an event from before adapters
    ({"params": "many", "trainable": -1}, ""),
])
def test_trainable_text(model, text):
    from dswb.tui.model_stage import trainable_text

    assert trainable_text(model) == text


def test_header_shows_trainable_only_for_adapter_stages(tmp_path):
    from dswb.tui.model import RunModel
    from dswb.tui.widgets.run_header import HeaderInfo, render_header

    paths = make_run(tmp_path / "runs", "20250101-120000-a")
    model = RunModel(paths)
    model.ingest([json.loads(line) for line in paths.events.read_text().splitlines()])
    assert model.stages["pretrain"].trainable_text() == ""
    text = model.stages["sft"].trainable_text()
    assert text == "trainable 20k of 1.3M (1.54%)"
    header = render_header(HeaderInfo("a", "finished", "sft", 2, 2, 2, 2, 1.0, trainable=text)).plain
    assert header.endswith("loss 1  trainable 20k of 1.3M (1.54%)")
    assert "trainable" not in render_header(HeaderInfo("a", "finished", "pretrain", 1, 2, 2, 2, 2.0)).plain
