"""`dswb runs samples` on a reasoning run: the answer and the thinking apart, the thinking folded
to one line in the table, in full below it with `--think`; runs without thinking print as before."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.cli.samples_cmd import HEADERS, reasoning_rows, think_blocks
from dswb.rundir import read_events
from dswb.tui.reasoning import fold_think
from dswb.tui.synthetic import RunSpec, write_run

PIPELINE = Path(__file__).parent / "fixtures" / "runs" / "20250101-170000-pipeline"
REASONING = RunSpec("20250101-180000-reasoning", stages=[("sft", 20), ("grpo", 60)], posttrain=True, reasoning=True,
                    step_s=0.2, eval_every=20, system_every=15, checkpoint_every=60, seed=7)


def samples_output(*args: str) -> str:
    result = CliRunner().invoke(app, ["runs", "samples", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_reasoning_rows_put_the_answer_and_the_folded_thinking_apart():
    rows = reasoning_rows([{"prompt": "2+2?", "completion": "<think>two and two\nmake four</think>4", "reward": 1,
                            "think": "two and two\nmake four", "answer": "4", "think_tokens": 6},
                           "not a row",
                           {"prompt": "3+3?", "completion": "<think>hmm", "think": "hmm", "answer": ""},
                           {"prompt": "1+1?", "completion": "2", "think": None, "answer": "2", "ended": True}])
    assert rows[0][:4] == ["1", "2+2?", "4", "two and two make four (6 tokens)"] and rows[0][4] == "1"
    assert rows[1][:4] == ["2", "3+3?", "(none: the thinking never closed)", "hmm (3 chars)"]
    assert rows[2][:4] == ["3", "1+1?", "2", "-"] and rows[2][-1] == "yes"
    assert think_blocks([{"think": "a\n\x1b[2Jb", "think_tokens": 2}, {"think": None}, {"think": "c"}]) == [
        "#1 thinking (2 tokens):", "  a", "  ?[2Jb", "#3 thinking (1 char):", "  c"]
    assert think_blocks([{"think": "x" * 9000}])[-1] == "  ... [cut: 9,000 chars]"


def test_runs_samples_folds_the_thinking_and_unfolds_it_with_think(tmp_path):
    paths = write_run(tmp_path, REASONING)
    rows = [e for e in read_events(paths.events) if e["kind"] == "samples"][-1]["samples"]
    first = rows[0]
    folded = samples_output(str(paths.root), "--stage", "grpo")
    assert "grpo step 60" in folded and "answer" in folded and "think" in folded
    assert fold_think(first["think"], first["think_tokens"]).split("…")[0][:40] in folded
    assert f"({first['think_tokens']} tokens)" in folded and "(none: the thinking never closed)" in folded
    assert "#1 thinking" not in folded and first["think"].splitlines()[-1] not in folded
    unfolded = samples_output(str(paths.root), "--stage", "grpo", "--think")
    assert unfolded.startswith(folded.rstrip("\n"))
    assert f"#1 thinking ({first['think_tokens']} tokens):" in unfolded and "#4 thinking" not in unfolded
    for line in first["think"].splitlines():
        assert f"  {line}" in unfolded


def test_runs_samples_without_thinking_prints_as_before(tmp_path):
    target = tmp_path / "runs" / PIPELINE.name
    shutil.copytree(PIPELINE, target)
    plain = samples_output(str(target), "--stage", "grpo")
    assert plain == samples_output(str(target), "--stage", "grpo", "--think")
    header = next(line for line in plain.splitlines() if line.startswith("prompt"))
    assert header.split() == HEADERS[:3] + ["per", "source"] + HEADERS[4:]
    assert "think" not in plain and "answer" not in plain
