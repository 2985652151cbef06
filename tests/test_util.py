"""`dswb.util`: the shared formatters and the atomic, durable file writes (standard library only)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dswb.util.atomic as atomic
from dswb.util.atomic import atomic_file, fsync_tree, write_atomic, write_json_atomic
from dswb.util.fmt import cut_text, fmt_age, fmt_bytes, fmt_duration, fmt_num, fmt_time

REPO = Path(__file__).resolve().parents[1]


# --- fmt ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, cell, compact", [
    (None, "-", "-"), (42, "42", "42"), (12345, "12,345", "12.3k"), (13480.3, "13,480", "13.5k"),
    (2_500_000, "2,500,000", "2.5M"), (1.23456, "1.235", "1.235"), (3e-4, "3.000e-04", "3.00e-04"),
    (0.0, "0", "0"), (2e12, "2.000e+12", "2.00e+12"), (float("nan"), "nan", "nan"),
    (float("-inf"), "-inf", "-inf"), (10 ** 400, "huge", "huge"), (-(10 ** 400), "-huge", "-huge"),
    (True, "True", "True"),
])
def test_fmt_num_cell_and_compact(value, cell, compact):
    assert fmt_num(value) == cell
    assert fmt_num(value, compact=True) == compact


def test_fmt_num_missing_and_text():
    assert fmt_num(None, missing="nan") == "nan"
    assert fmt_num("a\x1bb") == "a\ufffdb"
    assert fmt_num(["x"], text=lambda v: "<list>") == "<list>"


def test_fmt_duration_compact_and_clock():
    assert [fmt_duration(s) for s in (5, 192, 7500, 90000, None, -1, True)] == \
        ["5s", "3m12s", "2h05m", "1d01h", "-", "-", "-"]
    assert [fmt_duration(s, clock=True) for s in (5, 192, 7500, None, float("nan"), float("inf"))] == \
        ["00:05", "03:12", "2:05:00", "--:--", "--:--", "--:--"]
    assert fmt_duration(1e308) == ">99999d" and fmt_duration(10 ** 400) == "-"
    assert fmt_duration(None, missing="?") == "?"


def test_fmt_age_and_time():
    assert fmt_age(100.0, 112.0) == "12s ago"
    assert fmt_age(time.time() - 65) in ("1m05s ago", "1m06s ago")
    assert fmt_age("x") == "-" and fmt_time(None) == "-" and fmt_time(1e308) == "-"
    assert fmt_time(0.0) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(0.0))


def test_fmt_bytes_binary_units():
    assert [fmt_bytes(n) for n in (0, 512, 4096, 2_000_000, 80 * 10 ** 9, 3 * 2 ** 50)] == \
        ["0 B", "512 B", "4.0 KiB", "1.9 MiB", "74.5 GiB", "3072.0 TiB"]
    assert fmt_bytes(None) == "?" and fmt_bytes(None, missing="unknown space") == "unknown space"
    assert fmt_bytes(float("nan")) == "?" and fmt_bytes(-2048) == "-2.0 KiB"


def test_cut_text_marker_is_in_binary_units():
    assert cut_text("x" * 2_000_000, 10) == "x" * 10 + "… [cut, 1.9 MiB]"


def test_util_imports_only_the_standard_library():
    code = ("import sys, dswb.util, dswb.util.fmt, dswb.util.atomic;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, env=env)
    assert ast.literal_eval(out.stdout) == ["__main__", "dswb", "dswb.util", "dswb.util.atomic",
                                                        "dswb.util.fmt"]


# --- atomic ------------------------------------------------------------------------------------

def _renames(monkeypatch) -> list[tuple[str, str]]:
    """Record every `os.replace` (as `dswb.bench.faults` wraps it: looked up at call time)."""
    seen = []
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        seen.append((os.path.basename(src), os.path.basename(dst)))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return seen


def _fsyncs(monkeypatch) -> list[int]:
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_write_atomic_replaces_through_the_named_temporary(tmp_path, monkeypatch):
    path = tmp_path / "meta.json"
    path.write_text("old")
    renames, fsyncs = _renames(monkeypatch), _fsyncs(monkeypatch)
    write_atomic(path, "new ✓", fsync=False, tmp_name="meta.json.part")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert renames == [("meta.json.part", "meta.json")] and fsyncs == []
    write_json_atomic(path, {"a": 1}, tmp_name="meta.json.part", indent=1)
    assert json.loads(path.read_text()) == {"a": 1} and len(fsyncs) == 1  # fsync defaults to on
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_unique_temporary_is_prefixed_and_removed(tmp_path, monkeypatch):
    renames = _renames(monkeypatch)
    write_json_atomic(tmp_path / "status.json", {"state": "running"}, fsync=False, prefix=".status-")
    (src, dst), = renames
    assert src.startswith(".status-") and src.endswith(".tmp") and dst == "status.json"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.parametrize("tmp_name", [None, "f.bin.part"])
def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, tmp_name):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(path, "wb", tmp_name=tmp_name) as fh:
            fh.write(b"half")
            raise RuntimeError("disk on fire")
    with pytest.raises(TypeError):
        write_json_atomic(path, {"x": object()}, tmp_name=tmp_name)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_failed_rename_removes_the_temporary(tmp_path):
    target = tmp_path / "dir"
    target.mkdir()
    (target / "child").write_text("x")  # os.replace onto a non-empty directory fails
    with pytest.raises(OSError):
        write_atomic(target, b"data", tmp_name="dir.part")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_fsync_tree_files_and_optionally_directories(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    for name in ("a", "b", "sub/c"):
        (tmp_path / name).write_text(name)
    fsyncs = _fsyncs(monkeypatch)
    fsync_tree(tmp_path)
    assert len(fsyncs) == 3
    fsync_tree(tmp_path, dirs=True)
    assert len(fsyncs) == 3 + 5
    atomic.fsync_file(tmp_path / "a")
    atomic.fsync_dir(tmp_path)
    assert len(fsyncs) == 10
