"""The dashboard's side of post-training (issue 6): RL tab, samples view, the eval tab's pipeline
table, the launch form's stage picker, on the recorded pipeline run (pretrain -> sft -> rm ->
ppo -> grpo, events as docs/run-directory.md and docs/post-training.md specify)."""

from __future__ import annotations

import pytest
from fixtures.tui_support import FIXTURE_RUNS, FIXTURES, RUN_IDS, make_app, screen_text, settle

from dswb.errors import UserError
from dswb.rundir import RunPaths, read_events
from dswb.rundir.pipeline import pipeline_from_events, pipeline_rows
from dswb.tui import launching
from dswb.tui.launching import PresetChoice
from dswb.tui.screens.dashboard_keys import TAB_KEYS
from dswb.tui.screens.launch import LaunchScreen
from dswb.tui.widgets import MetricPlot, PipelineTable
from dswb.tui.widgets.rl_facts import timing_shares

pytestmark = pytest.mark.timeout(60)

PIPELINE = RunPaths(FIXTURE_RUNS / RUN_IDS["pipeline"])


def test_pipeline_table_from_events_matches_the_eval_events():
    events = read_events(PIPELINE.events)
    rows = pipeline_from_events(events)
    assert [r.stage for r in rows] == ["pretrain", "sft", "rm", "ppo", "grpo"]
    last = {}
    for e in events:
        if e["kind"] == "eval":
            last.setdefault(e["stage"], {}).update(e["metrics"])
    by_stage = {r.stage: r for r in rows}
    for stage in ("pretrain", "sft", "ppo", "grpo"):
        assert by_stage[stage].test_acc == last[stage]["test_acc"]
        best = max(e["metrics"]["task_acc"] for e in events if e["kind"] == "eval" and e["stage"] == stage)
        assert by_stage[stage].best_task_acc == best
    assert by_stage["rm"].pair_acc == last["rm"]["pair_acc"] and by_stage["rm"].test_acc is None
    assert by_stage["grpo"].cells() == ("grpo", "finished", "60/60", "84.8%", "86.0%", "-", "-")


def test_pipeline_rows_show_pending_stages_and_a_lost_run():
    facts = {"pretrain": {"state": "finished", "step": 10, "total_steps": 10},
             "sft": {"state": "running", "step": 3, "total_steps": 20}}
    rows = pipeline_rows(["pretrain", "sft", "ppo"], facts, run_state="lost")
    assert [r.state for r in rows] == ["finished", "lost", "pending"]
    assert rows[2].cells()[2] == "-"


def test_timing_shares_split_an_iteration():
    shares = timing_shares({"timing/generation_s": 0.3, "timing/update_s": 0.1, "timing/scoring_s": "x"})
    assert [(label, round(share, 2)) for label, _, share in shares] == [("generation", 0.75), ("update", 0.25)]


async def test_rl_tab_samples_and_pipeline_table_of_a_pipeline_run():
    app = make_app(FIXTURE_RUNS, attach="pipeline")
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        screen = app.screen
        text = screen_text(app)
        assert "grpo 5/5" in text and "✔ finished" in text
        await pilot.press(TAB_KEYS["rl"])
        await settle(pilot)
        for plot_id in ("plot-reward", "plot-kl", "plot-entropy", "plot-clip_ratio", "plot-length"):
            assert screen.query_one(f"#{plot_id}", MetricPlot).points_drawn > 0, plot_id
        reward = screen.query_one("#plot-reward", MetricPlot)
        assert [series[0] for series in reward.source()[0]] == ["reward", "std"]
        text = screen_text(app)
        assert "time per iteration" in text and "generation" in text and "zero-std groups" in text
        await pilot.press(TAB_KEYS["samples"])
        await settle(pilot)
        text = screen_text(app)
        last = [e for e in read_events(PIPELINE.events) if e["kind"] == "samples"][-1]
        assert f"grpo step {last['step']}" in text and "the latest of 12 recorded" in text
        for sample in last["samples"]:
            assert sample["prompt"] in text and sample["completion"] in text
        assert "eos" in text and "cut" in text, "whether each completion ended"
        await pilot.press(TAB_KEYS["eval"])
        await settle(pilot)
        table = screen.query_one(PipelineTable)
        assert table.row_count == 5
        text = screen_text(app)
        for needle in ("test_acc", "best task_acc", "rm pair_acc", "84.8%", "95.0%", "23.8%"):
            assert needle in text, needle
        await pilot.press(TAB_KEYS["system"])
        await settle(pilot)
        assert "Disk" in screen_text(app) and "GB" in screen_text(app), "disk_free_gb in the system panel"
        await pilot.press("left_square_bracket", "left_square_bracket")
        await settle(pilot)
        assert screen.stage_name == "rm"
        assert screen.query_one("#tabs").get_tab("rl").display is False, "no RL tab for the reward model"


async def test_no_disk_row_without_disk_free_gb():
    app = make_app(FIXTURE_RUNS, attach="finished")
    async with app.run_test(size=(200, 60)) as pilot:
        await settle(pilot)
        assert "RAM" in screen_text(app) and "Disk" not in screen_text(app)


def test_stage_picker_choices_for_a_pipeline():
    stages = ["pretrain", "sft", "rm", "ppo", "grpo"]
    values = [value for _, value in launching.stage_choices(stages)]
    assert values == ["all", "pretrain", "sft", "rm", "ppo", "grpo", "from:sft", "from:rm", "from:ppo"]
    assert launching.build_overrides("", "from:rm", "", stages) == ['run.stages=["rm", "ppo", "grpo"]']
    assert launching.build_overrides("", "ppo", "", stages) == ['run.stages=["ppo"]']
    assert launching.stage_choices(["pretrain"]) == [("all stages (pretrain)", "all")]


async def test_launch_form_launches_one_stage_of_a_pipeline_preset(tmp_path):
    preset = PresetChoice("pipeline", FIXTURES / "presets" / "pipeline.toml", "pipeline", "")
    calls = []

    def launcher(path, runs_root, overrides):
        calls.append(overrides)
        raise UserError("stop here")  # the form shows it; nothing starts in a test

    app = make_app(tmp_path, presets=lambda: [preset], launcher=launcher)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        form = app.screen
        assert isinstance(form, LaunchScreen) and form.stages == ["pretrain", "sft", "rm", "ppo", "grpo"]
        assert form.valid, form.message
        form.query_one("#stage").value = "from:ppo"
        await pilot.pause()
        assert form.valid, form.message
        assert "ppo, grpo:" in form.message
        await pilot.press("ctrl+l")
        await pilot.pause()
        await settle(pilot)
        assert calls == [['run.stages=["ppo", "grpo"]']]
        assert "stop here" in screen_text(app)


async def test_help_shows_the_refresh_setting():
    app = make_app(FIXTURE_RUNS, attach="finished", refresh_s=2.5)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        text = screen_text(app)
        assert "every 2.5 s" in text and "--refresh SECONDS" in text and "samples" in text
