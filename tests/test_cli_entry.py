"""The `dswb` executable's fast path: `dswb` and `dswb tui ...` open the dashboard without importing every
command module of the CLI; every other command, `--help` and `--version` go through the whole CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dswb.cli.entry import opens_dashboard


@pytest.mark.parametrize("args, dashboard", [
    ([], True), (["tui"], True), (["tui", "--attach", "latest", "--refresh", "2"], True),
    (["tui", "--help"], False), (["--help"], False), (["--version"], False), (["-h"], False),
    (["run", "presets/demo.toml"], False), (["runs", "list"], False), (["watch", "tui"], False),
])
def test_which_arguments_take_the_fast_path(args, dashboard):
    assert opens_dashboard(args) is dashboard


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
    assert not {"dswb.cli.app", "dswb.cli.plan_cmd", "dswb.cli.run_cmd", "dswb.cli.bench_cmd"} & modules


def test_the_fast_path_keeps_the_clis_errors_and_help(tmp_path):
    missing = dswb("tui", "--attach", "nope", "--runs-root", str(tmp_path))
    assert missing.returncode == 2
    assert [line for line in missing.stderr.splitlines() if not line.startswith("import time:")] == [
        f"error: no run 'nope' under {tmp_path} (try `dswb runs list --runs-root DIR`)"]
    bad = dswb("tui", "--bogus")
    assert bad.returncode == 2 and "No such option: --bogus" in bad.stderr
    helped = dswb("tui", "--help")
    assert helped.returncode == 0 and "--attach" in helped.stdout and "dswb.cli.app" in imported(helped)
