"""What watching costs (issue 11), without timing anything: the redraw budget, plots that repaint
only the rows that changed, followers that back off, the viewer's lower priority, and the pieces
of `dswb bench tui --live` (the figures themselves come from the benchmark)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from fixtures.tui_support import FIXTURE_SPECS, copy_runs, make_app, settle, wait_for

from dswb.rundir import RunPaths
from dswb.bench import tui as bench, tui_live as bench_live
from dswb.tui import chart
from dswb.tui.follower import RunFollower, backoff_limit
from dswb.tui.screens.dashboard_keys import TAB_KEYS
from dswb.tui.synthetic import run_events, status_for, write_status_fixed
from dswb.tui.widgets import MetricPlot

pytestmark = pytest.mark.timeout(60)


def test_a_new_step_changes_a_few_rows_of_a_plot_with_stable_axes():
    xs = list(range(1, 201))
    ys = [2.0 + 1.0 / i for i in xs]
    before, _ = chart.picture("loss", [chart.Series("a", xs, ys)], 60, 20, x_end=1000)
    same, _ = chart.picture("loss", [chart.Series("a", xs + [201], ys + [2.005])], 60, 20, x_end=1000,
                            previous=before)
    assert same == before, "a point that lands on drawn dots changes nothing: no rebuild, no repaint"
    more = list(range(201, 231))
    after, _ = chart.picture("loss", [chart.Series("a", xs + more, ys + [2.004] * 30)], 60, 20, x_end=1000,
                             previous=before)
    assert after.frame == before.frame, "the axes do not move for points inside them"
    changed = [y for y, (a, b) in enumerate(zip(chart.render(before), chart.render(after))) if a != b]
    assert 0 < len(changed) <= 2, changed
    spans = [chart.changed_span(chart.render(before)[y], chart.render(after)[y]) for y in changed]
    assert all(0 < end - start < 10 for start, end in spans), "only a few cells of those rows"


def test_follower_backs_off_on_a_quiet_run_and_wakes_on_a_write(tmp_path):
    root = copy_runs(tmp_path, ("finished",))
    paths = RunPaths(root / FIXTURE_SPECS["finished"].run_id)
    follower = RunFollower(paths, post=lambda message: None, interval=0.01)
    assert follower.max_interval == backoff_limit(0.01) == 0.08
    follower.start()
    try:
        deadline = time.monotonic() + 5
        while follower.polls < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        quiet_start, polls_start = time.monotonic(), follower.polls
        time.sleep(0.8)
        quiet_rate = (follower.polls - polls_start) / (time.monotonic() - quiet_start)
        assert quiet_rate < 1 / 0.05, f"{quiet_rate:.0f} polls/s on a quiet run: no back-off"
        with open(paths.events, "a") as f:
            f.write(json.dumps({"t": 1.8e9, "kind": "log", "message": "late line"}) + "\n")
        deadline = time.monotonic() + 2
        while not any(e["message"] == "late line" for e in follower.model.logs) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(e["message"] == "late line" for e in follower.model.logs)
    finally:
        follower.stop()


async def test_only_the_visible_tab_is_redrawn_and_at_most_once_per_refresh(tmp_path):
    root = copy_runs(tmp_path, ("live",))
    spec = FIXTURE_SPECS["live"]
    paths = RunPaths(root / spec.run_id)
    events = run_events(spec)
    done = paths.events.read_text().count("\n")
    app = make_app(root, attach=spec.run_id, refresh_s=3600.0)  # after the first redraw: none until a key
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.followers and app.screen.redraws >= 1 and
                       all(f.caught_up.is_set() for f in app.followers.values()), what="the first frame")
        screen = app.screen
        redraws = screen.redraws
        stats = screen.query_one("#stats-table")
        rows_before = stats.rows_repainted
        with open(paths.events, "a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in events[done:done + 40]))
        write_status_fixed(paths, status_for(spec, events[:done + 40]))
        follower = app.followers[spec.run_id]
        await wait_for(pilot, lambda: follower.model.events == done + 40, what="the follower")
        await pilot.pause(0.2)
        assert screen.redraws == redraws, "no redraw before the refresh period is over"
        assert screen.redraw_pending
        assert stats.rows_repainted == rows_before, "a hidden tab does no work"
        await pilot.press(TAB_KEYS["stats"])  # a key answers at once, refresh period or not
        await pilot.pause()
        assert screen.redraws == redraws + 1
        assert stats.get_row("loss")[6] == str(follower.model.stages["pretrain"].series["loss"].n)


async def test_plots_repaint_only_changed_rows_on_a_live_update(tmp_path):
    root = copy_runs(tmp_path, ("live",))
    spec = FIXTURE_SPECS["live"]
    paths = RunPaths(root / spec.run_id)
    events = run_events(spec)
    done = paths.events.read_text().count("\n")
    app = make_app(root, attach=spec.run_id)
    async with app.run_test(size=(200, 60)) as pilot:
        await settle(pilot)
        plot = app.screen.query_one("#plot-lr", MetricPlot)
        rows_before = plot.rows_repainted
        step_events = [e for e in events[done:] if e["kind"] == "metrics"][:1]
        with open(paths.events, "a") as f:
            f.write(json.dumps(step_events[0]) + "\n")
        await wait_for(pilot, lambda: app.followers[spec.run_id].model.stages["pretrain"].last_step
                       == step_events[0]["step"], what="the new step")
        await settle(pilot)
        repainted = plot.rows_repainted - rows_before
        assert 1 <= repainted <= 4, f"{repainted} of {plot.size.height} rows repainted for one step"


def test_viewer_priority_is_lower_but_launches_keep_ours():
    script = textwrap.dedent("""
        import os, subprocess, sys
        from dswb.tui.priority import NormalPriority, lower_priority
        base = os.getpriority(os.PRIO_PROCESS, 0)
        keeper = NormalPriority()
        lower_priority(5)
        child = keeper.call(lambda: subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"],
                                                   capture_output=True, text=True).stdout.strip())
        niced_child = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"],
                                     capture_output=True, text=True).stdout.strip()
        print(base, os.getpriority(os.PRIO_PROCESS, 0), child, niced_child)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    base, ui, launched, other = map(int, out.stdout.split())
    assert ui == min(19, base + 5), "the dashboard runs niced"
    assert launched == base, "a run launched from the dashboard keeps the user's priority"
    assert other == ui, "(what it would have been without the keeper thread)"


def test_bench_reads_median_tokens_and_counts_terminal_bytes(tmp_path):
    events = tmp_path / "events.jsonl"
    rows = [{"t": 100 + i, "kind": "metrics", "step": i, "metrics": {"tokens_per_s": 1000 + 10 * i}} for i in range(1, 12)]
    events.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "log"}\n')
    median, n = bench_live.median_tokens_per_s(events, warmup=5)
    assert (median, n) == (1085.0, 6)  # steps 6-11: 1060..1110
    assert bench_live.step_window(events) == (101, 111)
    pty = bench_live.PtyProcess([sys.executable, "-c", "import shutil; print(shutil.get_terminal_size()); print('x' * 5000)"])
    assert pty.finish(None) == 0
    assert pty.total >= 5000 and b"columns=200, lines=60" in pty.tail


def test_live_table_names_every_goal():
    run = {"wall_s": 10.0, "median_tokens_per_s": 1000.0, "throughput_ratio": 1.0}
    result = {"preset": "demo", "steps": 10, "terminal": "200x60", "cpus": 2, "load_avg": (1.0, 1.0, 1.0),
              "goals": bench_live.LIVE_GOALS,
              "runs": [{**run, "viewer": "headless", "label": "headless"},
                       {**run, "viewer": "tui", "label": "tui", "viewer_cpu_pct": 4.0, "viewer_bytes_per_s": 9000,
                        "throughput_ratio": 0.97},
                       {**run, "viewer": "watch", "label": "watch", "viewer_cpu_pct": 0.2, "viewer_bytes_per_s": 300,
                        "throughput_ratio": 0.9}]}
    table = bench_live.format_live(result)
    assert bench.format_table({**result, "live": True}) == table, "`dswb bench tui --live` prints this table"
    assert "met   tui: CPU <= 5% of a core" in table and "met   tui: terminal <= 16 KiB/s" in table
    assert "met   tui: throughput >= 95% of headless" in table
    assert "MISS  watch: throughput >= 95% of headless" in table


def test_tui_command_takes_refresh_and_nice():
    from typer.testing import CliRunner

    from dswb.cli.app import app as cli

    help_text = CliRunner().invoke(cli, ["tui", "--help"], terminal_width=200).output
    assert "--refresh" in help_text and "--nice" in help_text
    result = CliRunner().invoke(cli, ["tui", "--refresh", "0", "--runs-root", "nowhere"])
    assert result.exit_code == 2 and "--refresh" in result.output


def test_the_live_bench_trains_the_presets_pretraining_alone(tmp_path):
    """The demo preset is a five-stage pipeline; the bench measures its pretraining stage only, with
    the preset's threads unless told (`--threads 0`: every core)."""
    argv = bench_live._train_argv("presets/demo.toml", 250, tmp_path, tmp_path / "r")
    assert 'run.stages=["pretrain"]' in argv and "train.steps=250" in argv
    assert not any(a.startswith("run.threads=") for a in argv)
    assert "run.threads=0" in bench_live._train_argv("presets/demo.toml", 250, tmp_path, tmp_path / "r", threads=0)
    from tests.test_cli_errors import assert_one_line_error, dswb

    assert_one_line_error(dswb("bench", "rollout", "--threads", "1"), "--threads is for `dswb bench tui --live`")
