"""Finding presets by name or path, their header comments, and `dswb presets list|show|validate`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dswb import presets
from dswb.cli.app import app
from dswb.config import load_config
from dswb.errors import UserError
from dswb.presets import find_preset, list_presets, read_header

SMOKE = """\
# dswb run presets/smoke.toml
# Smoke test: a tiny model for a few steps.
# Finishes in seconds on a laptop.

[run]
name = "smoke"

[train]
steps = 20
warmup_steps = 2
"""

BAD_KEY = """\
# dswb run presets/bad.toml
[train]
stepz = 20
"""

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def preset_cwd(tmp_path, monkeypatch) -> Path:
    """A working directory with ./presets holding `smoke` and `bad`."""
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "smoke.toml").write_text(SMOKE)
    (tmp_path / "presets" / "bad.toml").write_text(BAD_KEY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("text, summary, command", [
    (SMOKE, "Smoke test: a tiny model for a few steps. Finishes in seconds on a laptop.",
     "dswb run presets/smoke.toml"),
    ("# Demo.\n# Run: `dswb run presets/demo.toml --set train.steps=5`\n[run]\n", "Demo.",
     "dswb run presets/demo.toml --set train.steps=5"),
    ("#   $ dswb run x.toml\n#\n# Two\n#  lines\n\n# not part of the header\n", "Two lines", "dswb run x.toml"),
    ("[run]\n# dswb run late.toml\n", "", ""),
    ("# about dswbx things\n", "about dswbx things", ""),
])
def test_read_header(text, summary, command):
    assert read_header(text) == (summary, command)


def test_find_preset_by_path(tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text(SMOKE)
    assert find_preset(str(path)) == path


def test_find_preset_by_name_in_cwd(preset_cwd):
    expected = preset_cwd / "presets" / "smoke.toml"
    assert find_preset("smoke").resolve() == expected
    assert find_preset("smoke.toml").resolve() == expected
    assert find_preset("presets/smoke.toml").resolve() == expected


def test_unknown_preset_lists_names(preset_cwd):
    with pytest.raises(UserError) as err:
        find_preset("smok")
    message = str(err.value)
    assert "unknown preset 'smok'" in message and "smoke" in message and "bad" in message
    with pytest.raises(UserError, match="no such preset file 'nope/x.toml'"):
        find_preset("nope/x.toml")
    with pytest.raises(UserError, match="is a directory"):
        find_preset("presets")


def test_cwd_presets_shadow_repo_presets(tmp_path, monkeypatch):
    cwd, repo = tmp_path / "cwd", tmp_path / "repo"
    for d in (cwd, repo):
        d.mkdir()
    (cwd / "smoke.toml").write_text("# dswb run smoke.toml\n# mine\n")
    (repo / "smoke.toml").write_text("# dswb run presets/smoke.toml\n# shipped\n")
    (repo / "demo.toml").write_text("# dswb run presets/demo.toml\n# the demo\n")
    monkeypatch.setattr(presets, "preset_dirs", lambda: [cwd, repo])
    infos = {p.name: p for p in list_presets()}
    assert list(infos) == ["demo", "smoke"]
    assert infos["smoke"].summary == "mine" and infos["smoke"].path == cwd / "smoke.toml"
    assert find_preset("smoke") == cwd / "smoke.toml"
    assert find_preset("demo") == repo / "demo.toml"


def test_preset_dirs_order(preset_cwd):
    dirs = presets.preset_dirs()
    assert dirs[0].resolve() == preset_cwd / "presets"
    assert len({d.resolve() for d in dirs}) == len(dirs)


def test_cli_list(preset_cwd):
    result = invoke("presets", "list")
    assert result.exit_code == 0, result.output
    assert "smoke" in result.stdout and "Smoke test" in result.stdout
    assert "dswb run presets/smoke.toml" in result.stdout


def test_cli_show_prints_the_file(preset_cwd):
    result = invoke("presets", "show", "smoke")
    assert result.exit_code == 0
    assert result.stdout == SMOKE


def test_cli_show_resolved_round_trips(preset_cwd, tmp_path):
    result = invoke("presets", "show", "smoke", "--resolved", "--set", "train.lr=0.001")
    assert result.exit_code == 0, result.output
    data = tomllib.loads(result.stdout)
    assert data["train"]["steps"] == 20 and data["train"]["lr"] == 0.001
    assert data["run"]["name"] == "smoke" and "batching" in data
    out = tmp_path / "resolved.toml"
    out.write_text(result.stdout)
    assert load_config(out).train.lr == 0.001


def test_cli_show_unknown_preset(preset_cwd):
    line = one_error_line(invoke("presets", "show", "nosuch"))
    assert "unknown preset 'nosuch'" in line and "smoke" in line


def test_cli_validate_ok(preset_cwd):
    result = invoke("presets", "validate", "presets/smoke.toml", "--set", "train.steps=5")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: presets/smoke.toml"


def test_cli_validate_reports_the_key_and_file(preset_cwd):
    line = one_error_line(invoke("presets", "validate", "bad"))
    assert "stepz" in line and "bad.toml" in line and "did you mean 'train.steps'" in line


def test_cli_validate_bad_override(preset_cwd):
    line = one_error_line(invoke("presets", "validate", "smoke", "--set", "train.steps=-1"))
    assert "train.steps" in line


def test_cli_validate_several_files_keeps_going(preset_cwd):
    result = invoke("presets", "validate", "bad", "smoke", "missing")
    assert result.exit_code == 2
    (ok_line,) = result.stdout.strip().splitlines()
    assert ok_line.startswith("ok: ") and Path(ok_line[4:]).resolve() == preset_cwd / "presets" / "smoke.toml"
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and "stepz" in errors[0] and "unknown preset 'missing'" in errors[1]
