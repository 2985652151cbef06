"""Every user error: one clear line on stderr naming the place, exit code 2, no traceback,
and nothing lost (a failed start never overwrites an existing run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY


def dswb(*args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dswb", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_toml(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("[train\nsteps = 3\n")
    assert_one_line_error(dswb("run", str(preset), "--runs-root", str(tmp_path / "runs")), str(preset), "invalid TOML")
    assert not (tmp_path / "runs").exists()


def test_unknown_key_and_wrong_type(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("[train]\nsteps = 3\nlearning_rate = 1e-3\n")
    assert_one_line_error(dswb("run", str(preset)), str(preset), "train.learning_rate")
    preset.write_text("[train]\nsteps = 3\n")
    assert_one_line_error(dswb("run", str(preset), "--set", "train.steps=many"), "--set", "train.steps",
                          "expected an integer")


def test_missing_preset_and_missing_data_file(tmp_path):
    assert_one_line_error(dswb("run", str(tmp_path / "nope.toml")), "nope.toml")
    args = ["run", "--runs-root", str(tmp_path / "runs"), "--set", "data.source=files",
            "--set", f"data.paths=['{tmp_path / 'missing.jsonl'}']"]
    # No preset file: the defaults plus overrides.
    result = dswb(*args[:1], "presets/smoke.toml", *args[1:], cwd=Path(__file__).parent.parent)
    assert_one_line_error(result, "missing.jsonl")


def _files_run(tmp_path: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    sets = []
    for item in TINY + [f"data.paths=['{data}']", "data.source=files", "model.vocab_size=300",
                        "data.chunk_size=32", "data.chunk_overlap=4", "data.min_chunk=8", *extra]:
        sets += ["--set", item]
    return dswb("run", "--runs-root", str(tmp_path / "runs"), "--quiet", *sets)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    data = tmp_path / "corpus.jsonl"
    good = [json.dumps({"text": f"document number {i} with some words in it"}) for i in range(20)]
    data.write_text("\n".join(good[:3] + ['{"text": "broken'] + good[3:]) + "\n")
    assert_one_line_error(_files_run(tmp_path, data), f"{data}:4")


def test_empty_dataset(tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    assert_one_line_error(_files_run(tmp_path, data), "empty.jsonl")


def test_resume_of_a_missing_run(tmp_path):
    assert_one_line_error(dswb("run", "--resume", "nothing-here", "--runs-root", str(tmp_path)), "nothing-here")


@pytest.mark.parametrize("args,needle", [
    (("runs", "show", "nope"), "nope"),
    (("bench", "nope"), "unknown benchmark"),
])
def test_other_commands(tmp_path, args, needle):
    assert_one_line_error(dswb(*args, "--runs-root", str(tmp_path)) if args[0] == "runs" else dswb(*args), needle)
