"""Snapshots of the main screens at 80x24 and 200x60 (pytest-textual-snapshot, Textual 8.2.8).

Deterministic: recorded runs, a frozen clock, a fixed root label and preset list, and every
follower settled before the picture. Update after a deliberate change with
`pytest tests/test_tui_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

import pytest
from fixtures.tui_support import EMPTY_ROOT, FIXTURE_RUNS, FIXTURES, RUN_IDS, make_app, settle

from dswb.tui.launching import PresetChoice
from dswb.tui.widgets import RunsTable

pytestmark = pytest.mark.timeout(120)

SMALL, LARGE = (80, 24), (200, 60)
PRESETS = [PresetChoice("tiny", FIXTURES / "presets" / "tiny.toml",
                        "A fixed preset for the launch-form tests and snapshot.", "dswb run tiny.toml")]


def app_for(attach=None, root=FIXTURE_RUNS):
    return make_app(root, attach, presets=lambda: PRESETS)


def keys(*pressed):
    async def run_before(pilot):
        await settle(pilot)
        for key in pressed:
            await pilot.press(key)
            await settle(pilot)
    return run_before


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
def test_runs_list(snap_compare, size):
    assert snap_compare(app_for(), terminal_size=size, run_before=keys())


def test_empty_root(snap_compare):
    assert snap_compare(app_for(root=EMPTY_ROOT), terminal_size=SMALL, run_before=keys())


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
def test_dashboard_finished(snap_compare, size):
    assert snap_compare(app_for("finished"), terminal_size=size, run_before=keys())


def test_dashboard_failed_alerts(snap_compare):
    assert snap_compare(app_for("failed"), terminal_size=SMALL, run_before=keys("7"))


def test_dashboard_rl(snap_compare):
    assert snap_compare(app_for("rl"), terminal_size=LARGE, run_before=keys("2"))


def test_dashboard_pipeline_rl(snap_compare):
    """The RL tab of a GRPO stage: reward with its std, KL, entropy, clip ratio, completion length,
    and where an iteration's time goes."""
    assert snap_compare(app_for("pipeline"), terminal_size=LARGE, run_before=keys("2"))


def test_dashboard_samples(snap_compare):
    assert snap_compare(app_for("pipeline"), terminal_size=LARGE, run_before=keys("0"))


def test_dashboard_pipeline_table(snap_compare):
    assert snap_compare(app_for("pipeline"), terminal_size=(120, 40), run_before=keys("3"))


def test_dashboard_stats(snap_compare):
    assert snap_compare(app_for("finished"), terminal_size=SMALL, run_before=keys("4"))


def test_dashboard_batching(snap_compare):
    assert snap_compare(app_for("finished"), terminal_size=SMALL, run_before=keys("8"))


def test_dashboard_fp8(snap_compare):
    assert snap_compare(app_for("fp8"), terminal_size=SMALL, run_before=keys("9"))


def test_help(snap_compare):
    assert snap_compare(app_for("finished"), terminal_size=SMALL, run_before=keys("question_mark"))


def test_launch_form(snap_compare):
    assert snap_compare(app_for(root=EMPTY_ROOT), terminal_size=SMALL, run_before=keys("n"))


def test_compare(snap_compare):
    async def run_before(pilot):
        await settle(pilot)
        table = pilot.app.screen.query_one(RunsTable)
        table.move_cursor(row=table.get_row_index(RUN_IDS["finished"]))
        await pilot.press("space")
        table.move_cursor(row=table.get_row_index(RUN_IDS["live"]))
        await pilot.press("c")
        await settle(pilot)

    assert snap_compare(app_for(), terminal_size=LARGE, run_before=run_before)


def test_no_color(snap_compare, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = app_for("finished")
    assert app.no_color
    assert snap_compare(app, terminal_size=SMALL, run_before=keys())
