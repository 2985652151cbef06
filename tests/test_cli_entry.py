"""The `dswb` executable's fast path: `dswb` and `dswb tui ...` open the dashboard without importing every
command module of the CLI nor Typer's coercion (pydantic); every other command, `--help`, `--version`
and any argument the fast path does not take go through Typer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dswb.cli import tui_cmd
from dswb.cli.entry import opens_dashboard, quick_options


@pytest.mark.parametrize("args, dashboard", [
    ([], True), (["tui"], True), (["tui", "--attach", "latest", "--refresh", "2"], True),
    (["tui", "--help"], False), (["--help"], False), (["--version"], False), (["-h"], False),
    (["run", "presets/demo.toml"], False), (["runs", "list"], False), (["watch", "tui"], False),
])
def test_which_arguments_take_the_fast_path(args, dashboard):
    assert opens_dashboard(args) is dashboard


def test_quick_options_read_the_commands_own_annotations():
    assert quick_options(tui_cmd.tui, []) == {}
    assert quick_options(tui_cmd.tui, ["-a", "latest", "--refresh", "2", "--nice=0", "--runs-root", "r"]) == {
        "attach": "latest", "refresh": 2.0, "nice": 0, "runs_root": Path("r")}
    for typers in (["--bogus"], ["--attach"], ["--nice", "x"], ["--refresh=0.01"], ["--nice", "20"], ["-ax"]):
        assert quick_options(tui_cmd.tui, typers) is None, typers


def dswb(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "dswb", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def imported(result: subprocess.CompletedProcess) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def test_the_dashboard_opens_without_the_other_commands(tmp_path):
    result = dswb("tui", "--runs-root", str(tmp_path), env={"DSWB_TUI_FIRST_FRAME": "1"})
    assert result.returncode == 0 and "first-frame" in result.stdout, result.stderr[-2000:]
    modules = imported(result)
    assert "dswb.cli.tui_cmd" in modules and "dswb.tui.app" in modules
    assert not {"dswb.cli.app", "dswb.cli.plan_cmd", "dswb.cli.run_cmd", "dswb.cli.bench_cmd", "pydantic"} & modules


def test_the_fast_path_keeps_the_clis_errors_and_help(tmp_path):
    missing = dswb("tui", "--attach", "nope", "--runs-root", str(tmp_path))
    assert missing.returncode == 2
    assert [line for line in missing.stderr.splitlines() if not line.startswith("import time:")] == [
        f"error: no run 'nope' under {tmp_path} (try `dswb runs list --runs-root DIR`)"]
    bad = dswb("tui", "--bogus")
    assert bad.returncode == 2 and "No such option: --bogus" in bad.stderr
    out_of_range = dswb("tui", "--refresh", "0.01")
    assert out_of_range.returncode == 2 and "greater than or equal to 0.05" in out_of_range.stderr
    helped = dswb("tui", "--help")
    assert helped.returncode == 0 and "--attach" in helped.stdout and "dswb.cli.app" in imported(helped)
