"""`dswb data prepare`: the report printed and written, events in the run directory, a cache the
next run reuses, user errors as one line; `dswb run` publishes the data report too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dswb.cli.data_cmd import ProgressPrinter, progress_line

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


def dswb(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dswb", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def corpus(tmp_path: Path) -> Path:
    lines = [json.dumps({"text": f"doc {i}: " + " ".join(WORDS[(i * j) % 11] for j in range(30))}) for i in range(40)]
    lines += lines[:3]  # three duplicates
    path = tmp_path / "c.jsonl.gz"
    import gzip

    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_prepare_prints_and_writes_the_report_then_hits_the_cache(tmp_path):
    sets = ["--set", "data.source=files", "--set", f"data.paths=['{corpus(tmp_path)}']", "--set",
            "model.vocab_size=300", "--set", "run.name=c"]
    first = dswb("data", "prepare", *sets, "--runs-root", str(tmp_path / "runs"), "--plain", "-w", "1",
                 "--json", str(tmp_path / "r.json"))
    assert first.returncode == 0, first.stderr
    assert "exact duplicates     3" in first.stdout and "documents kept       40" in first.stdout
    assert "train sample lengths" in first.stdout and "read " in first.stdout  # report and progress lines
    (run,) = (tmp_path / "runs").glob("*-c-data")
    report = json.loads((run / "data-report.json").read_text())
    assert report["exact_duplicates"] == 3 and report["records"] == 43 and report["cache_hit"] is False
    assert json.loads((tmp_path / "r.json").read_text())["documents"] == 40
    kinds = [e["kind"] for e in events(run)]
    assert kinds[0] == "run_start" and "data_progress" in kinds and kinds[-1] == "run_end"
    assert [e for e in events(run) if e["kind"] == "data_report"][0]["report"]["chunks"] == report["chunks"]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    again = dswb("data", "prepare", *sets, "--runs-root", str(tmp_path / "runs"), "--plain")
    assert again.returncode == 0 and "(from the cache)" in again.stdout
    assert len(list((tmp_path / "runs" / ".cache").glob("tok-*"))) == 1


def test_prepare_user_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": nope}\n')
    result = dswb("data", "prepare", "--set", "data.source=files", "--set", f"data.paths=['{bad}']",
                  "--runs-root", str(tmp_path / "runs"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "bad.jsonl:2: invalid JSON" in lines[0]
    (run,) = (tmp_path / "runs").glob("*-run-data")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "bad.jsonl:2" in status["error"]
    missing = dswb("data", "prepare", "--set", "data.source=files", "--set", "data.paths=['/nope/*.parquet']",
                   "--runs-root", str(tmp_path / "runs"))
    assert missing.returncode == 2 and "no file matches /nope/*.parquet" in missing.stderr


def test_progress_printer_lines():
    event = {"phase": "read", "fraction": 0.5, "documents": 1200, "mb": 10.0, "elapsed_s": 4.0, "eta_s": 4.0,
             "duplicates": 3}
    line = progress_line(event)
    assert line.startswith("read") and "50%" in line and "1,200 docs" in line and "2.5 MB/s" in line
    assert "3 dups" in line and "ETA 00:04" in line

    class Out(list):
        def write(self, s):
            self.append(s)

        def flush(self):
            pass

        def isatty(self):
            return True

    out = Out()
    printer = ProgressPrinter(out)
    printer(event)
    printer({**event, "phase": "tokenize", "tokens": 99})
    printer.close()
    text = "".join(out)
    assert "\r\x1b[2K[##########----------] read" in text and "99 tokens" in text and text.endswith("\n")


@pytest.mark.slow
def test_run_on_files_publishes_the_data_report(tmp_path):
    from tests.helpers import run_in_process, tiny_config

    config = tiny_config("data.source=files", f"data.paths=['{corpus(tmp_path)}']", "model.vocab_size=300",
                         "train.steps=2", "checkpoint.every=0", "eval.task_samples=0")
    assert run_in_process(config, tmp_path / "run") == 0
    report = json.loads((tmp_path / "run" / "data-report.json").read_text())
    assert report["exact_duplicates"] == 3
    evs = events(tmp_path / "run")
    kinds = [e["kind"] for e in evs]
    assert kinds.index("data_report") < kinds.index("stage_start")
    start = evs[kinds.index("stage_start")]
    assert "report" not in start["data"] and start["data"]["train_tokens"] == report["train_tokens"]
