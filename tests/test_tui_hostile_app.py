"""The dashboard and `dswb watch` on a run directory full of hostile lines (issue 10).

A real run's events with junk between them: a metric of 1e308 (plotext died on it), non-finite
and out-of-range numbers, wrong types, unknown kinds, binary lines, a 2 MB log message and run
error, nested arrays, a torn last line and a truncated `status.json`. Every tab is drawn; the
good events still show.
"""

from __future__ import annotations

import pytest
from fixtures.tui_support import make_app, screen_text, settle
from typer.testing import CliRunner

from dswb.cli.app import app as cli
from dswb.tui.screens.dashboard import DashboardScreen
from dswb.tui.screens.dashboard_keys import TAB_KEYS
from dswb.tui.synthetic import RunSpec, write_run
from dswb.tui.widgets import MetricPlot

pytestmark = pytest.mark.timeout(120)

HOSTILE = [
    b'{"t": 1735732900.0, "kind": "metrics", "stage": "pretrain", "step": 41, "metrics": {"loss": 1e308, "lr": -1e308}}',
    b'{"kind": "metrics", "stage": "pretrain", "step": "42", "metrics": {"loss": 1}}',
    b'{"kind": "metrics", "stage": "pretrain", "step": 43, "metrics": null}',
    b'{"kind": "metrics", "stage": "pretrain", "step": 44, "metrics": {"loss": NaN, "lr": "fast", "grad_norm": [1, 2],'
    b' "x": {"a": 1}, "big": 1e999, "tokens_per_s": -Infinity, "huge": 1' + b"0" * 400 + b'}}',
    b'{"kind": "metrics", "stage": "pretrain", "step": 45, "metrics": {"reward": 1e308, "kl": -1e308, "clip_ratio": NaN}}',
    b'{"kind": "metrics", "stage": "pretrain", "step": 46, "metrics": [1, 2, 3]}',
    b'{"kind": "log", "level": "warning", "message": "' + b"M" * 2_000_000 + b'"}',
    b'{"kind": "alert", "code": ["a"], "message": {"m": 1}, "level": 5, "explain": "\\u001b[2Jwhy"}',
    b"\x00\xff\xfe binary junk \x1b[31m",
    b'{"kind": "weird", "data": 1}',
    b'{"kind": 5}',
    b'{"kind": ["metrics"]}',
    b"[1, 2, 3]",
    b'"a string"',
    b"null",
    b"[" * 200 + b"]" * 200,
    b'{"kind": "batching", "stage": "pretrain", "hist": {"edges": "x", "counts": [1, 2]}, "metrics": {"n": "y"}}',
    b'{"kind": "fp8", "stage": "pretrain", "step": 40, "layers": {"a": "b", "c": {"amax": 1e400}, "' + b"g" * 500 + b'": {}}}',
    b'{"kind": "samples", "stage": "pretrain", "step": 40, "samples": [{"prompt": null, "completion": ["x"], '
    b'"reward": "1", "rewards": [1], "length": 1e308, "ended": "yes"}, 5, "junk", {"prompt": "\\u001b]0;t\\u0007"}]}',
    b'{"kind": "stage_start", "stage": {"x": 1}, "total_steps": 1e308}',
    b'{"kind": "eval", "stage": "pretrain", "step": 40, "metrics": {"task_acc": "high", "test_acc": Infinity}}',
    b'{"kind": "metrics", "stage": "' + b"S" * 100_000 + b'", "step": 1, "metrics": {"loss": 2}}',
]


def hostile_run(tmp_path):
    root = tmp_path / "runs"
    spec = RunSpec("20250101-180000-hostile", stages=[("pretrain", 80)], eval_every=20, system_every=10, fp8_every=20)
    paths = write_run(root, spec)
    lines = paths.events.read_bytes().splitlines()
    huge_error = b'{"kind": "run_end", "state": 7, "error": "' + b"E" * 3_000_000 + b'"}'
    last_system = b'{"kind": "system", "t": 1735732950.0, "metrics": {"cpu_pct": "high", "disk_free_gb": 1e308, "rss_mb": Infinity}}'
    mixed = lines[:60] + HOSTILE + lines[60:] + [huge_error, last_system]
    paths.events.write_bytes(b"\n".join(mixed) + b'\n{"kind": "metrics", "step": 9')  # a torn last line
    paths.status.write_bytes(b'{"state": "running", "step": 8')  # truncated status.json
    paths.log.unlink()  # the log tab then shows the log events (with the 2 MB message)
    return root, spec, paths


async def test_every_tab_draws_a_run_full_of_hostile_lines(tmp_path):
    root, spec, paths = hostile_run(tmp_path)
    app = make_app(root, attach=spec.run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        model = app.followers[spec.run_id].model
        assert model.bad_lines >= 3 and model.stages["pretrain"].series["loss"].n >= 80
        text = screen_text(app)
        assert spec.run_id in text and "· unknown" in text, "a truncated status.json reads as unknown"
        assert "error: " + "E" * 40 in text, "the 3 MB run error is shown, cut"
        assert screen.query_one("#plot-loss", MetricPlot).points_drawn > 0
        for tab, key in TAB_KEYS.items():
            await pilot.press(key)
            await settle(pilot)
            assert isinstance(app.screen, DashboardScreen), tab
            screen_text(app)
        await pilot.press(TAB_KEYS["log"])
        await settle(pilot)
        assert "… [cut, 1.9 MiB]" in screen_text(app), "the 2 MB log message is shown cut, with a marker"
        await pilot.press(TAB_KEYS["system"])
        await settle(pilot)
        assert "Disk" in screen_text(app) and "1.000e+308 GB" in screen_text(app)
        assert not app.followers[spec.run_id].error, "the reader kept going"


def test_watch_prints_one_short_line_per_hostile_event(tmp_path):
    root, spec, paths = hostile_run(tmp_path)
    result = CliRunner().invoke(cli, ["watch", spec.run_id, "--runs-root", str(root), "--from-start", "--no-follow"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) > 100
    assert max(len(line) for line in lines) < 1300, "megabytes of text are cut"
    assert any("… [cut, 1.9 MiB]" in line for line in lines)
    assert any("step 41/80" in line and "loss=" in line and "e+" in line for line in lines), "1e308 printed"
    assert not any("\x1b" in line or "\x00" in line for line in lines), "no control characters reach the terminal"
