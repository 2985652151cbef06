"""The real CLI on the real engine: `dswb run presets/smoke.toml` pretrains with falling loss and
leaves a final model that transformers loads offline; Ctrl-C checkpoints and marks the run
`stopped`; a TTY gets a live progress bar; the import walls hold."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dswb.engine.checkpoint.layout import latest_checkpoint, list_checkpoints
from dswb.rundir import read_events, read_status
from tests.helpers import TINY

ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smoke_preset_pretrains_and_the_final_model_loads(tmp_path):
    run_dir = tmp_path / "smoke"
    result = subprocess.run([sys.executable, "-m", "dswb", "run", str(ROOT / "presets" / "smoke.toml"),
                             "--run-dir", str(run_dir), "--plain"], capture_output=True, text=True, env=ENV,
                            timeout=280)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "finished:" in result.stdout
    status = read_status(run_dir / "status.json")
    assert status["state"] == "finished" and status["step"] == status["total_steps"] == 60
    events = read_events(run_dir / "events.jsonl")
    kinds = {e["kind"] for e in events}
    assert {"run_start", "stage_start", "batching", "metrics", "eval", "system", "checkpoint", "stage_end",
            "run_end"} <= kinds
    losses = [e["metrics"]["loss"] for e in events if e["kind"] == "metrics"]
    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert any("task_acc" in e["metrics"] for e in events if e["kind"] == "eval")
    assert len(list_checkpoints(run_dir / "checkpoints" / "pretrain")) == 2  # keep_last = 2
    assert (run_dir / "config.toml").read_text().count("[") >= 9  # every section, fully resolved

    check = subprocess.run([sys.executable, "-c", f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path = {str(run_dir / 'final' / 'pretrain')!r}
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
ids = tok("12+34=", return_tensors="pt", add_special_tokens=True).input_ids
out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
print("OK", type(model).__name__, len(tok), tok.decode(out[0][ids.shape[1]:]))
"""], capture_output=True, text=True, env=ENV, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.startswith("OK LlamaForCausalLM")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_checkpoints_and_marks_the_run_stopped(tmp_path):
    run_dir = tmp_path / "ctrlc"
    args = [sys.executable, "-m", "dswb", "run", "--run-dir", str(run_dir), "--plain", "--quiet"]
    for item in TINY + ["train.steps=2000", "checkpoint.every=0"]:
        args += ["--set", item]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and not read_events(run_dir / "events.jsonl", ("metrics",)):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    status = read_status(run_dir / "status.json")
    assert status["state"] == "stopped"
    ckpt = latest_checkpoint(run_dir / "checkpoints" / "pretrain")
    assert ckpt is not None and ckpt.step == status["step"] > 0
    assert read_events(run_dir / "events.jsonl", ("checkpoint",))[-1]["reason"] == "stop"


@pytest.mark.timeout(120)
def test_progress_bar_on_a_tty(tmp_path):
    args = [sys.executable, "-m", "dswb", "run", "--run-dir", str(tmp_path / "tty")]
    for item in TINY + ["train.steps=6", "checkpoint.every=0", "eval.task_samples=0"]:
        args += ["--set", item]
    pid, fd = pty.fork()
    if pid == 0:  # child: the real CLI with a terminal as stdout
        os.environ.update(ENV, COLUMNS="120")
        os.execv(sys.executable, args)
    output = b""
    deadline = time.time() + 110
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    assert "\r\x1b[2K" in text  # redrawn in place
    assert "pretrain 6/6 100% [" in text and "ETA" in text and "loss " in text


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_engine_never_imports_textual():
    # every module of the engine: stages, RL, FP8, placement, distributed, data
    mods = _modules_after("import importlib, pkgutil, dswb.engine\n"
                          "for m in pkgutil.walk_packages(dswb.engine.__path__, 'dswb.engine.'):\n"
                          "    importlib.import_module(m.name)")
    assert {"torch", "dswb.engine.stages.grpo", "dswb.engine.fp8.linear", "dswb.engine.rl.update"} <= mods
    assert not {m for m in mods if m == "textual" or m.startswith("textual.")}


def test_cli_help_does_not_import_torch():
    mods = _modules_after("import dswb.cli.app")
    heavy = {"torch", "transformers", "textual", "tokenizers"}
    assert not heavy & mods
    result = subprocess.run([sys.executable, "-m", "dswb", "--help"], capture_output=True, text=True, env=ENV,
                            timeout=60)
    assert result.returncode == 0 and "run" in result.stdout


def test_a_time_limit_ends_pretraining_early_and_the_final_model_records_that_step(tmp_path):
    """`train.max_seconds` ends the stage before `train.steps`: the held-out score, the final model's
    stage record and `stage_end` name the step it really ended at (not `train.steps`)."""
    import json

    from tests.helpers import run_in_process, tiny_config

    run = tmp_path / "r"
    assert run_in_process(tiny_config("train.steps=100000", "train.max_seconds=2", "checkpoint.every=0"), run) == 0
    events = read_events(run / "events.jsonl")
    last = max(e["step"] for e in events if e["kind"] == "metrics")
    assert 0 < last < 100000
    record = json.loads((run / "final" / "pretrain" / "dswb_stage.json").read_text())
    assert record["step"] == last
    end = next(e for e in events if e["kind"] == "stage_end")
    test_eval = [e for e in events if e["kind"] == "eval" and "test_acc" in e["metrics"]]
    assert end["step"] == last and [e["step"] for e in test_eval] == [last]
