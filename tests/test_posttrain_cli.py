"""The post-training views of the CLI: the per-stage table in `runs show`, `runs samples`, and the
progress line of the RL and preference stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.cli.progress import metrics_summary

FIXTURE = Path(__file__).parent / "fixtures" / "runs" / "20250101-170000-pipeline"


def run_dir(tmp_path: Path) -> Path:
    target = tmp_path / "runs" / FIXTURE.name
    shutil.copytree(FIXTURE, target)
    return target


def test_runs_show_prints_the_pipeline_table(tmp_path):
    target = run_dir(tmp_path)
    result = CliRunner().invoke(app, ["runs", "show", str(target)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("stage ") and "test_acc" in line)
    stages = [line.split()[0] for line in lines[head + 2:head + 7]]
    assert stages == ["pretrain", "sft", "rm", "ppo", "grpo"]
    as_json = json.loads(CliRunner().invoke(app, ["runs", "show", str(target), "--json"]).output)
    assert [row["stage"] for row in as_json["pipeline"]] == stages


def test_runs_samples_prints_the_latest_rollouts(tmp_path):
    target = run_dir(tmp_path)
    result = CliRunner().invoke(app, ["runs", "samples", str(target), "--stage", "grpo"])
    assert result.exit_code == 0, result.output
    assert "completion" in result.output and "grpo step" in result.output
    as_json = CliRunner().invoke(app, ["runs", "samples", str(target), "--last", "2", "--json"]).output.splitlines()
    assert len(as_json) == 2 and all(json.loads(line)["kind"] == "samples" for line in as_json)
    missing = CliRunner().invoke(app, ["runs", "samples", str(target), "--stage", "dpo"])
    assert missing.exit_code == 2 and "no samples recorded of stage dpo" in missing.output


def test_progress_line_leads_with_what_each_stage_optimises():
    assert metrics_summary({"reward": 0.5, "kl": 0.01, "loss": 0.0}).startswith("reward 0.500  kl 0.010  loss")
    assert metrics_summary({"accuracy": 0.9, "loss": 0.3}).startswith("acc 90.0%  loss")
    assert metrics_summary({"rewards/accuracies": 0.75, "loss": 0.6}).startswith("acc 75.0%  loss")
    assert metrics_summary({"loss": 1.0, "lr": 1e-3}) == "loss 1.0000  lr 1.00e-03"
