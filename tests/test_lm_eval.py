"""lm-evaluation-harness tasks (docs/lm-eval.md) on the real engine, offline: the local YAML tasks in
tests/data/lm_eval_tasks over a tiny model trained here; `dswb eval --tasks` agrees with lm-eval's own
`simple_evaluate`, a run target gets an `eval` event that `dswb runs show` displays, a stage's `eval_tasks`
emit their event before `stage_end`, a LoRA adapter goes through `peft=`, and refusals are one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.config import load_config
from dswb.engine.eval import harness
from dswb.errors import UserError
from dswb.rundir import read_events
from tests.helpers import TINY, run_in_process, tiny_config

pytest.importorskip("lm_eval", reason="lm-eval tasks need lm-eval (the [lm-eval] extra, part of [test])")
pytest.importorskip("peft", reason="the LoRA stage needs peft")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

INCLUDE = str(Path(__file__).parent / "data" / "lm_eval_tasks")
TASKS = ["dswb_addition_gen", "dswb_addition_mc"]
STAGE_TASKS = [f"train.eval_tasks={json.dumps(TASKS)}", f"sft.eval_tasks={json.dumps(TASKS)}",
               f"eval.tasks_include={json.dumps([INCLUDE])}", "eval.tasks_limit=10"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run: pretrain (20 steps) then a LoRA SFT (4 steps), both with `eval_tasks` on the local tasks."""
    run = tmp_path_factory.mktemp("lm_eval") / "run"
    cfg = tiny_config('run.stages=["pretrain","sft"]', "train.steps=20", "sft.steps=4", "sft.lora={enabled=true, r=4}",
                      *STAGE_TASKS)
    assert run_in_process(cfg, run) == 0
    return run


def reference(model_args: dict, tasks: list[str], limit: int | None = None) -> dict:
    """lm-eval's own numbers, computed here without dswb: {task/metric: value}."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(**model_args, device="cpu", batch_size=8, dtype="float32")
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=INCLUDE, include_defaults=False),
                          limit=limit)
    return {f"{t}/{k.split(',')[0]}": float(v) for t, r in out["results"].items() for k, v in r.items()
            if k.endswith(",none") and "_stderr" not in k}


def lm_metrics(events: list[dict], stage: str) -> dict:
    return {k[len("lm_eval/"):]: v for e in events if e["kind"] == "eval" and e["stage"] == stage
            for k, v in e["metrics"].items() if k.startswith("lm_eval/")}


def test_stage_eval_tasks_emit_an_eval_event_before_stage_end(trained):
    events = read_events(trained / "events.jsonl")
    for stage in ("pretrain", "sft"):
        kinds = [(e["kind"], sorted(e["metrics"]) if e["kind"] == "eval" else None) for e in events
                 if e.get("stage") == stage and e["kind"] in ("eval", "stage_end")]
        lm = [i for i, (k, m) in enumerate(kinds) if k == "eval" and m[0].startswith("lm_eval/")]
        assert lm and lm[-1] == len(kinds) - 2 and kinds[-1][0] == "stage_end", kinds
        assert kinds[lm[-1]][1] == ["lm_eval/dswb_addition_gen/exact_match", "lm_eval/dswb_addition_mc/acc"]
    event = [e for e in events if e["kind"] == "eval" and "source" in e][0]
    assert event["source"]["name"] == "lm-eval" and event["source"]["limit"] == 10 and event["step"] == 20
    assert "lm-eval: dswb_addition_gen/exact_match=" in (trained / "train.log").read_text()
    # the numbers are lm-eval's own on the saved model
    assert lm_metrics(events, "pretrain") == pytest.approx(
        reference({"pretrained": str(trained / "final" / "pretrain")}, TASKS, limit=10))


def test_dswb_eval_tasks_on_a_model_dir_equals_simple_evaluate(trained, tmp_path):
    final = trained / "final" / "pretrain"
    out = tmp_path / "r.json"
    result = invoke("eval", final, "--tasks", ",".join(TASKS), "--include", INCLUDE, "--device", "cpu", "--json", out)
    assert result.exit_code == 0, result.output
    assert "dswb_addition_mc   acc" in result.stdout and "time" in result.stdout and "±" in result.stdout
    data = json.loads(out.read_text())
    assert "samples" not in data and data["lm_eval_version"] and not data["event_appended"]
    got = {k[len("lm_eval/"):]: v for k, v in data["metrics"].items()}
    assert got == pytest.approx(reference({"pretrained": str(final)}, TASKS))
    assert not [e for e in read_events(trained / "events.jsonl") if e.get("source", {}).get("limit") is None
                and "source" in e]   # a model directory adds no event


def test_dswb_eval_on_a_run_appends_an_event_that_runs_show_displays(trained, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    before = len(read_events(run / "events.jsonl"))
    result = invoke("eval", f"{run}:pretrain", "--tasks", "dswb_addition_mc", "--include", INCLUDE, "--limit", 5)
    assert result.exit_code == 0, result.output
    events = read_events(run / "events.jsonl")
    assert len(events) == before + 1
    event = events[-1]
    assert event["kind"] == "eval" and event["stage"] == "pretrain" and event["step"] == 20
    assert list(event["metrics"]) == ["lm_eval/dswb_addition_mc/acc"] and event["source"]["limit"] == 5
    shown = invoke("runs", "show", run)
    assert shown.exit_code == 0, shown.output
    assert "lm_eval/dswb_addition_mc/acc" in shown.stdout


def test_dswb_eval_on_a_run_also_reaches_its_trackers(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    run = tmp_path / "run"
    assert run_in_process(tiny_config('monitor.report_to=["mlflow"]'), run) == 0
    result = invoke("eval", f"{run}:pretrain", "--tasks", "dswb_addition_mc", "--include", INCLUDE, "--limit", 5)
    assert result.exit_code == 0, result.output
    event = read_events(run / "events.jsonl")[-1]
    saved = json.loads((run / "mlflow_run.json").read_text())
    assert f"sent to  mlflow: {saved['tracking_uri']} (run {saved['run_id']})" in result.stdout
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    history = client.get_metric_history(saved["run_id"], "pretrain/lm_eval.dswb_addition_mc.acc")
    assert [(m.step, m.value) for m in history] == [(12, event["metrics"]["lm_eval/dswb_addition_mc/acc"])]
    assert client.get_run(saved["run_id"]).info.status == "FINISHED"   # the ended run stays as it ended
    assert len(client.search_runs([client.get_experiment_by_name("dswb").experiment_id])) == 1


def test_a_lora_final_goes_through_peft(trained, tmp_path):
    final = trained / "final" / "sft"
    assert (final / "adapter_config.json").is_file()
    out = tmp_path / "r.json"
    result = invoke("eval", final, "--tasks", ",".join(TASKS), "--include", INCLUDE, "--limit", 10, "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["model_args"]["peft"] == str(final)
    assert data["model_args"]["pretrained"] == str(trained / "final" / "pretrain")
    got = {k[len("lm_eval/"):]: v for k, v in data["metrics"].items()}
    assert got == pytest.approx(lm_metrics(read_events(trained / "events.jsonl"), "sft"))
    # the adapter's base gone: one line
    moved = tmp_path / "adapter"
    shutil.copytree(final, moved)
    info = json.loads((moved / "dswb_stage.json").read_text())
    info["adapter"]["base"] = str(tmp_path / "gone")
    (moved / "dswb_stage.json").write_text(json.dumps(info))
    cfg = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(tmp_path / "gone")}))
    line = one_error_line(invoke("eval", moved, "--tasks", "dswb_addition_mc", "--include", INCLUDE))
    assert "gone" in line


def test_refusals_are_one_line(trained, tmp_path):
    final = trained / "final" / "pretrain"
    line = one_error_line(invoke("eval", final, "--tasks", "dswb_addition_ge", "--include", INCLUDE))
    assert "unknown lm-eval task 'dswb_addition_ge'" in line and "dswb_addition_gen" in line
    line = one_error_line(invoke("eval", final, "--tasks", "dswb_addition_mc", "--include", tmp_path / "nowhere"))
    assert "no such task directory" in line
    rm = tmp_path / "rm"
    shutil.copytree(final, rm)
    cfg = json.loads((rm / "config.json").read_text())
    (rm / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    assert "reward model" in one_error_line(invoke("eval", rm, "--tasks", "dswb_addition_mc", "--include", INCLUDE))


def test_config_refusals(tmp_path):
    with pytest.raises(UserError, match="rm.eval_tasks: the reward model"):
        load_config(None, TINY + ['rm.eval_tasks=["dswb_addition_mc"]'])
    with pytest.raises(UserError, match="eval.tasks_include: no such directory"):
        load_config(None, TINY + ['train.eval_tasks=["x"]', f'eval.tasks_include=["{tmp_path / "nope"}"]'])
    with pytest.raises(UserError, match="parallel.mode = 'ddp'"):
        load_config(None, TINY + ['train.eval_tasks=["x"]', "parallel.mode=ddp"])


def test_an_unknown_stage_task_fails_before_training(tmp_path):
    cfg = tiny_config('run.stages=["pretrain"]', 'train.eval_tasks=["dswb_addition_gen", "dswb_adition_mc"]',
                      f"eval.tasks_include={json.dumps([INCLUDE])}")
    assert run_in_process(cfg, tmp_path / "run") == 2
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert not [e for e in events if e["kind"] == "stage_start"]
    end = [e for e in events if e["kind"] == "run_end"][-1]
    assert "train.eval_tasks: unknown lm-eval task 'dswb_adition_mc'" in json.dumps(end)


def test_the_eval_tab_shows_lm_eval_numbers():
    from dswb.tui.widgets.eval_table import lm_eval_cell

    assert lm_eval_cell({"val_loss": 1.0}) == ""
    assert lm_eval_cell({"lm_eval/b/acc": 0.5, "lm_eval/a/exact_match": 0.25, "task_acc": 1.0}) == \
        "a/exact_match=0.25  b/acc=0.5"


async def test_the_eval_table_adds_an_lm_eval_column_only_when_a_stage_has_one():
    from textual.app import App

    from dswb.tui.widgets import EvalTable

    class Host(App):
        def compose(self):
            yield EvalTable(id="t")

    async with Host().run_test() as pilot:
        table = pilot.app.query_one(EvalTable)
        table.show([("pretrain", 20, {"val_loss": 1.5, "task_acc": 0.5})])
        await pilot.pause()
        assert [str(c.label) for c in table.columns.values()][-1] == "task_acc"
        table.show([("pretrain", 20, {"val_loss": 1.5, "lm_eval/dswb_addition_mc/acc": 0.3}),
                    ("sft", 4, {"val_loss": 1.2})])
        await pilot.pause()
        assert [str(c.label) for c in table.columns.values()][-1] == "lm-eval"
        assert table.get_row_at(0)[-1] == "dswb_addition_mc/acc=0.3" and table.get_row_at(1)[-1] == "-"


def test_lm_evals_own_output_is_held_back_and_shown_only_on_failure(capfd):
    with harness.held_output():
        print("a progress bar")
        os.system("echo 'fatal: not a git repository' >&2")
    assert capfd.readouterr() == ("", "")
    with pytest.raises(RuntimeError, match="boom"):
        with harness.held_output():
            print("what led to it")
            raise RuntimeError("boom")
    out, err = capfd.readouterr()
    assert out == "" and "what led to it" in err
