"""Post-training a local model on local JSONL files (SFT -> DPO -> GRPO, no pretraining): no
`data.paths` needed, no empty `eval:` lines, and `dswb runs show` in the run's stage order."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dswb.cli.progress import PlainReporter
from dswb.config import load_config
from dswb.engine.telemetry.monitor import Monitor
from dswb.errors import UserError
from dswb.rundir import EventWriter, create_run_dir, read_events, write_status
from tests.helpers import run_in_process
from tests.test_cli_errors import assert_one_line_error, dswb
from tests.test_cli_runs import invoke
from tests.test_lora_local import local_model

POSTTRAIN = ['run.stages=["sft","dpo","grpo"]', "data.source=files", 'sft.data=["sft.jsonl"]',
             'dpo.data=["prefs.jsonl"]', 'grpo.data=["prompts.jsonl"]', 'grpo.rewards=["my_rewards:correct"]']
NO_PATHS = "data.paths: data.source = 'files' needs at least one path for pretraining"


# --- 1. data.paths only for pretraining --------------------------------------------------------

def test_files_without_paths_validate_when_no_stage_pretrains():
    config = load_config(None, POSTTRAIN)
    assert config.data.source == "files" and config.data.paths == []


def test_files_without_paths_still_fail_for_pretraining():
    with pytest.raises(UserError) as err:
        load_config(None, ['run.stages=["pretrain","sft"]', "data.source=files", 'sft.data=["sft.jsonl"]'])
    assert str(err.value) == f"defaults: {NO_PATHS}"


def test_the_cli_gives_one_line_and_exit_2_for_pretraining_without_paths(tmp_path):
    assert_one_line_error(dswb("run", "--runs-root", str(tmp_path), "--set", "data.source=files"), NO_PATHS)


# --- 2. an evaluation that measured nothing ----------------------------------------------------

def test_an_empty_evaluation_prints_and_records_nothing(tmp_path):
    paths = create_run_dir(tmp_path / "run")
    out = io.StringIO()
    monitor = Monitor(paths, {"state": "running"}, reporter=PlainReporter(out, every_s=0))
    monitor.eval("grpo", 10, {})
    monitor.eval("sft", 4, {"val_loss": 2.5})
    monitor.events.close()
    assert out.getvalue().splitlines() == ["[sft] step 4 eval: val_loss=2.5"]
    assert [(e["stage"], e["metrics"]) for e in read_events(paths.events, ("eval",))] == [("sft", {"val_loss": 2.5})]
    assert monitor.status["last_eval"] == {"val_loss": 2.5}
    assert "grpo" not in paths.log.read_text()


def test_the_reporter_skips_an_empty_eval_event():
    out = io.StringIO()
    PlainReporter(out).on_event({"kind": "eval", "stage": "grpo", "step": 10, "metrics": {}})
    assert out.getvalue() == ""


@pytest.mark.timeout(120)
def test_a_files_based_grpo_stage_prints_no_empty_eval_line(tmp_path):
    model = local_model(tmp_path / "my-model")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a}+1=", "answer": str(a + 1)}) + "\n" for a in range(40)))
    (tmp_path / "my_rewards.py").write_text("def correct(prompts, completions, answer, **kwargs):\n"
                                            "    return [float(c.strip() == a) for c, a in zip(completions, answer)]\n")
    config = load_config(None, [
        'run.stages=["grpo"]', "data.source=files", f'model.path="{model}"', "model.max_seq_len=32",
        f'grpo.data=["{prompts}"]', f'grpo.rewards=["{tmp_path / "my_rewards.py"}:correct"]', "run.threads=1",
        "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=2", "grpo.max_new_tokens=2",
        "grpo.warmup_steps=1", "eval.every=1", "eval.max_batches=1", "checkpoint.every=0"])
    out = io.StringIO()
    run = tmp_path / "run"
    assert run_in_process(config, run, reporter=PlainReporter(out, every_s=0)) == 0
    assert "[grpo] step 2/2" in out.getvalue()
    eval_lines = [line for line in out.getvalue().splitlines() if " eval:" in line]   # held-out reward only
    assert len(eval_lines) == 2 and all(" eval: val_reward=" in line for line in eval_lines), out.getvalue()
    assert all(e["metrics"] for e in read_events(run / "events.jsonl", ("eval",)))


# --- 3. runs show: every stage's statistics, in the run's order --------------------------------

def _posttrain_run(root: Path):
    """A finished SFT -> DPO -> GRPO run directory (with an empty GRPO eval, as older runs wrote)."""
    paths = create_run_dir(root / "20250101-120000-post")
    paths.config.write_text("")
    events = EventWriter(paths.events)
    events.emit("run_start", None, 0, run_id=paths.run_id, config={"run": {"stages": ["sft", "dpo", "grpo"]}},
                argv=[], resumed=False)
    for stage, metric in (("sft", "loss"), ("dpo", "rewards/accuracies"), ("grpo", "reward")):
        events.emit("stage_start", stage, 0, total_steps=2, model={}, data={})
        for step in (1, 2):
            events.emit("metrics", stage, step, metrics={metric: step / 10})
        events.emit("eval", stage, 2, metrics={} if stage == "grpo" else {f"val_{stage}": 0.5})
        events.emit("system", stage, 2, metrics={"rss_mb": 900.0})
        events.emit("stage_end", stage, 2, state="finished")
    events.emit("run_end", None, 2, state="finished", error=None)
    events.close()
    write_status(paths.status, {"state": "finished", "pid": 0, "run_id": paths.run_id, "stage": "grpo",
                                "stages": ["sft", "dpo", "grpo"], "step": 2, "total_steps": 2})
    return paths


def test_show_prints_every_stage_in_the_run_order_the_last_stage_last(tmp_path):
    _posttrain_run(tmp_path)
    result = invoke("runs", "show", "post", "--runs-root", tmp_path)
    assert result.exit_code == 0, result.output
    titles = [line.split()[0] + " " + line.split()[1] for line in result.stdout.splitlines()
              if line.startswith(("metrics (", "eval (", "system ("))]
    assert titles == ["metrics (sft)", "eval (sft)", "system (sft)", "metrics (dpo)", "eval (dpo)", "system (dpo)",
                      "metrics (grpo)", "system (grpo)"]
    assert "reward " in result.stdout.split("metrics (grpo)")[1]
    assert "last eval    dpo step 2: val_dpo=0.5" in result.stdout


def test_show_json_lists_stages_in_the_run_order(tmp_path):
    _posttrain_run(tmp_path)
    result = invoke("runs", "show", "post", "--runs-root", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data["stats"]["metrics"]) == ["sft", "dpo", "grpo"]
    assert list(data["stats"]["eval"]) == ["sft", "dpo"]
    assert data["last_eval"]["stage"] == "dpo"
    assert [row["stage"] for row in data["pipeline"]] == ["sft", "dpo", "grpo"]
