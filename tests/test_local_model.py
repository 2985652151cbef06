"""Starting from a local Hugging Face model directory (what `presets/pretrain-local.toml` is for),
on a local corpus, launched with `dswb run --detach`: the run lives on its own and finishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dswb.rundir import effective_state, read_events, read_status
from tests.helpers import TINY, run_in_process, tiny_config

FILES = ["data.source=files", "model.vocab_size=300", "data.chunk_size=32", "data.chunk_overlap=4",
         "data.min_chunk=8", "eval.task_samples=0", "train.steps=4", "checkpoint.every=0"]


def _corpus(path: Path) -> Path:
    words = "the model reads a local corpus of plain documents and learns to continue them".split()
    lines = [json.dumps({"text": " ".join(words[(i + j) % len(words)] for j in range(20 + i % 30))})
             for i in range(60)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_continue_from_a_local_model_directory_detached(tmp_path):
    corpus = _corpus(tmp_path / "corpus.jsonl")
    first = tmp_path / "runs" / "first"
    assert run_in_process(tiny_config(*FILES, f"data.paths=['{corpus}']"), first) == 0
    model_dir = first / "final" / "pretrain"
    assert (model_dir / "tokenizer.json").is_file()

    args = [sys.executable, "-m", "dswb", "run", "--detach", "--runs-root", str(tmp_path / "runs")]
    for item in TINY + FILES + [f"data.paths=['{corpus}']", f"model.path={model_dir}", "run.name=second"]:
        args += ["--set", item]
    started = time.monotonic()
    launched = subprocess.run(args, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert launched.returncode == 0, launched.stderr
    assert time.monotonic() - started < 30  # it returns at once, it does not train
    run_dir = Path(launched.stdout.split()[0])
    assert run_dir.name.endswith("-second") and run_dir.parent == tmp_path / "runs"
    early = read_status(run_dir / "status.json")  # viewers see the run at once, with the child's pid
    assert early["state"] in ("starting", "running") and isinstance(early["pid"], int)

    deadline = time.time() + 180
    while time.time() < deadline and effective_state(read_status(run_dir / "status.json")) in (
            "unknown", "starting", "running"):
        time.sleep(0.2)
    status = read_status(run_dir / "status.json")
    assert status["state"] == "finished", (run_dir / "process.out").read_text()[-2000:]
    start = read_events(run_dir / "events.jsonl", ("stage_start",))[0]
    assert start["model"]["source"] == str(model_dir)
    assert start["data"]["tokenizer"] == str(model_dir)  # the model's own tokenizer, not a new BPE
    first_vocab = read_events(first / "events.jsonl", ("stage_start",))[0]["model"]["vocab"]
    assert start["model"]["vocab"] == first_vocab
