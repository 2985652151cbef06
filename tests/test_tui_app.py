"""Pilot tests of the dashboard on recorded run directories (App.run_test, no real terminal)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fixtures.tui_support import EMPTY_ROOT, FIXTURE_RUNS, RUN_IDS, copy_runs, make_app, screen_text, settle, wait_for

from dswb.rundir import RunPaths, read_events
from dswb.stats import RunningStats
from dswb.tui.screens.compare import CompareScreen
from dswb.tui.screens.confirm import ConfirmScreen
from dswb.tui.screens.dashboard import DashboardScreen
from dswb.tui.screens.help import HelpScreen
from dswb.tui.screens.launch import LaunchScreen
from dswb.tui.screens.runs import RunsScreen
from dswb.tui.synthetic import FIXTURE_SPECS, RunSpec, run_events, status_for, write_run, write_status_fixed
from dswb.tui.widgets import Fp8Panel, MetricPlot, RunsTable, StatsTable

pytestmark = pytest.mark.timeout(60)


async def open_run(pilot, key: str) -> DashboardScreen:
    table = pilot.app.screen.query_one(RunsTable)
    table.move_cursor(row=table.get_row_index(RUN_IDS[key]))
    await pilot.press("enter")
    await settle(pilot)
    assert isinstance(pilot.app.screen, DashboardScreen)
    assert sum(isinstance(s, DashboardScreen) for s in pilot.app.screen_stack) == 1, "opened once"
    return pilot.app.screen


async def test_runs_list_shows_every_run_with_state_step_and_loss():
    app = make_app(FIXTURE_RUNS)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        text = screen_text(app)
        table = app.screen.query_one(RunsTable)
        assert list(table.rows_by_id) == sorted(RUN_IDS.values(), reverse=True)
        for needle in ("✔ finished", "✘ failed", "▶ running", "300/300", "122/300", "150/300", "1.013"):
            assert needle in text, needle


async def test_empty_runs_root_says_how_to_start():
    app = make_app(EMPTY_ROOT)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "No runs under runs yet. Press n to launch one" in screen_text(app)
        await pilot.press("enter", "c")  # nothing to open or compare: no crash
        assert isinstance(app.screen, RunsScreen)


async def test_finished_run_dashboard_has_plots_and_true_statistics():
    app = make_app(FIXTURE_RUNS)
    async with app.run_test(size=(200, 60)) as pilot:
        await settle(pilot)
        screen = await open_run(pilot, "finished")
        text = screen_text(app)
        assert "✔ finished" in text and "step 300/300" in text and "100%" in text
        for plot_id in ("plot-loss", "plot-lr", "plot-grad_norm", "plot-tokens_per_s"):
            assert screen.query_one(f"#{plot_id}", MetricPlot).points_drawn > 0, plot_id
        losses = [e["metrics"]["loss"] for e in read_events(RunPaths(FIXTURE_RUNS / RUN_IDS["finished"]).events)
                  if e["kind"] == "metrics"]
        oracle = RunningStats()
        for value in losses:
            oracle.update(value)
        await pilot.press("4")  # stats tab
        await settle(pilot)
        table = screen.query_one("#stats-table", StatsTable)
        row = table.get_row("loss")
        assert row[1] == f"{oracle.last:.4g}" and row[2] == f"{oracle.mean:.4g}" and row[3] == f"{oracle.std:.4g}"
        assert row[4] == f"{oracle.min:.4g}" and row[5] == f"{oracle.max:.4g}" and row[6] == "300"
        assert "FP8" not in screen_text(app), "no FP8 tab without fp8 events"
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        assert not app.followers, "leaving the dashboard stops its follower thread"


async def test_failed_run_shows_its_error_and_the_alert_explanation():
    app = make_app(FIXTURE_RUNS, attach=RUN_IDS["failed"])
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        text = screen_text(app)
        assert "✘ failed" in text
        assert "error: loss was not finite for 3 steps in a row at step 122" in text
        assert "Alerts (1)" in text
        await pilot.press("7")
        await settle(pilot)
        text = screen_text(app)
        assert "nonfinite_loss" in text and "why: The loss became NaN/Inf" in text
        await pilot.press("6")
        await settle(pilot)
        assert "training failed: non-finite loss" in screen_text(app)


async def test_rl_run_shows_rl_plots_and_switches_stages():
    app = make_app(FIXTURE_RUNS, attach="rl")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert "grpo 2/2" in screen_text(app)
        await pilot.press("2")
        await settle(pilot)
        for name in ("reward", "kl", "entropy", "clip_ratio"):  # this older run logged clip_frac
            assert screen.query_one(f"#plot-{name}", MetricPlot).points_drawn > 0, name
        assert "reward" in screen_text(app)
        await pilot.press("3")
        await settle(pilot)
        text = screen_text(app)
        assert "sft" in text and "grpo" in text, "eval results per stage"
        await pilot.press("left_square_bracket")
        await settle(pilot)
        assert screen.stage_name == "sft"
        assert "sft 1/2" in screen_text(app)
        assert screen.query_one("#tabs").get_tab("rl").display is False, "no RL tab for the SFT stage"


async def test_fp8_and_batching_panels_read_their_events():
    app = make_app(FIXTURE_RUNS, attach="fp8")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("9")
        await settle(pilot)
        panel = app.screen.query_one(Fp8Panel)
        assert panel.table.row_count == 5
        text = screen_text(app)
        assert "lm_head" in text and "saturation %" in text and "at step 200 (latest of 20 samples)" in text
        await pilot.press("8")
        await settle(pilot)
        text = screen_text(app)
        assert "padding efficiency" in text and "sequence lengths" in text
        assert "112-128" in text and "1,500" in text  # a histogram bin and its count


async def test_live_run_replayed_while_the_app_watches(tmp_path):
    root = copy_runs(tmp_path, ("live",))
    spec = FIXTURE_SPECS["live"]
    paths = RunPaths(root / spec.run_id)
    events = run_events(spec)
    done = paths.events.read_text().count("\n")
    app = make_app(root, attach=spec.run_id)

    def writer() -> None:
        written = done
        with open(paths.events, "a") as f:
            while written < len(events):
                chunk = events[written:written + 7]
                text = "".join(json.dumps(e) + "\n" for e in chunk)
                f.write(text[: len(text) // 2])  # a torn line the reader must wait out
                f.flush()
                time.sleep(0.003)
                f.write(text[len(text) // 2:])
                f.flush()
                written += len(chunk)
                write_status_fixed(paths, status_for(spec, events[:written]))
                time.sleep(0.002)

    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert "▶ running" in screen_text(app) and "step 150/300" in screen_text(app)
        thread = threading.Thread(target=writer)
        thread.start()
        await wait_for(pilot, lambda: not thread.is_alive(), what="the writer")
        thread.join()
        await settle(pilot)
        text = screen_text(app)
        assert "✔ finished" in text and "step 300/300" in text
        model = app.followers[spec.run_id].model
        assert model.events == len(events) and model.bad_lines == 0
        assert model.stages["pretrain"].series["loss"].n == 300
        assert screen.redraws < len(events) - done, "events are read in batches, not redrawn one by one"


async def test_control_keys_write_the_control_channel_and_stop_asks_first(tmp_path):
    root = copy_runs(tmp_path, ("live",))
    app = make_app(root, attach="live")
    control = root / RUN_IDS["live"] / "control.jsonl"

    def commands() -> list[str]:
        return [json.loads(line)["cmd"] for line in control.read_text().splitlines()] if control.exists() else []

    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("p", "k")
        assert commands() == ["pause", "checkpoint"]
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert isinstance(app.screen, DashboardScreen) and commands() == ["pause", "checkpoint"]
        await pilot.press("s", "y")
        assert commands() == ["pause", "checkpoint", "stop"]
        status = root / RUN_IDS["live"] / "status.json"
        data = json.loads(status.read_text())
        data["state"] = "paused"
        status.write_text(json.dumps(data))
        await wait_for(pilot, lambda: "⏸ paused" in screen_text(app), what="the paused state")
        await pilot.press("p")
        assert commands()[-1] == "resume", "p resumes a paused run"


async def test_resume_restarts_only_runs_that_ended(tmp_path):
    root = copy_runs(tmp_path, ("failed", "live"))
    resumed = []
    app = make_app(root, resumer=lambda run_root: resumed.append(run_root) or (RunPaths(run_root), 1))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunsTable)
        table.move_cursor(row=table.get_row_index(RUN_IDS["live"]))
        await pilot.press("R")
        assert resumed == [], "a running run is not resumed again"
        table.move_cursor(row=table.get_row_index(RUN_IDS["failed"]))
        await pilot.press("R")
        assert resumed == [root / RUN_IDS["failed"]]


async def test_launch_form_validates_inline_then_launches_detached(tmp_path):
    root = tmp_path / "runs"
    calls = []

    def fake_launcher(preset, runs_root, overrides):
        calls.append((preset, runs_root, list(overrides)))
        paths = write_run(runs_root, RunSpec("20250102-000000-launched", stages=[("pretrain", 40)]))
        return paths, 12345

    app = make_app(root, launcher=fake_launcher)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        assert isinstance(app.screen, LaunchScreen)
        form = app.screen
        assert form.preset().name == "smoke", "the quick smoke preset is the default"
        assert form.valid
        form.query_one("#overrides").text = "train.lr=abc\n"
        await pilot.pause()
        assert not form.valid
        assert "train.lr: expected a number" in screen_text(app)
        await pilot.press("ctrl+l")
        assert calls == [], "an invalid form never launches"
        form.query_one("#overrides").text = "train.steps=5\n# a comment\n"
        form.query_one("#run-name").value = "quick"
        await pilot.pause()
        assert form.valid, form.message
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="the new run's dashboard")
        preset, runs_root, overrides = calls[0]
        assert preset.endswith("smoke.toml") and runs_root == root
        assert overrides == ["train.steps=5", 'run.name="quick"']
        await settle(pilot)
        assert "20250102-000000-launched" in screen_text(app)


async def test_compare_overlays_two_runs():
    app = make_app(FIXTURE_RUNS)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        table = app.screen.query_one(RunsTable)
        table.move_cursor(row=table.get_row_index(RUN_IDS["finished"]))
        await pilot.press("space")
        table.move_cursor(row=table.get_row_index(RUN_IDS["failed"]))
        await pilot.press("c")
        await settle(pilot)
        assert isinstance(app.screen, CompareScreen)
        plot = app.screen.query_one(MetricPlot)
        series, _ = plot.source()
        assert [label[:1] for label, _, _ in series] == ["A", "B"]
        assert len(series[0][1]) > 0 and len(series[1][1]) > 0
        text = screen_text(app)
        assert "finished" in text and "failed" in text
        await pilot.press("v")
        assert plot.metric_title == "validation loss"


async def test_help_lists_the_keys_of_the_screen_below():
    app = make_app(FIXTURE_RUNS, attach="finished")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for needle in ("Run dashboard", "pause a running run", "write a checkpoint now", "command palette",
                       "runs keep training"):
            assert needle in text, needle
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_command_palette_opens_a_run():
    app = make_app(FIXTURE_RUNS)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await pilot.press(*"open run 20250101-140000")
        await wait_for(pilot, lambda: "Open run 20250101-140000-failed" in screen_text(app), what="the palette hit")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), what="the dashboard")
        assert app.screen.run_id == RUN_IDS["failed"]


async def test_quitting_stops_every_thread(tmp_path):
    root = copy_runs(tmp_path, ("live", "finished"))
    app = make_app(root, attach="live")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        threads = [app.scanner, *app.followers.values()]
        await pilot.press("q")
    for thread in threads:
        thread.join(2)
        assert not thread.is_alive(), thread.name


def test_attach_to_an_unknown_run_is_one_clear_error(tmp_path):
    from dswb.errors import UserError
    from dswb.tui.app import create_app

    with pytest.raises(UserError, match="no run 'nope'"):
        create_app(tmp_path, attach="nope")
