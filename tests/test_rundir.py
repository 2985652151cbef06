"""The run-directory contract: atomic status, tolerant event reading, owner-only control."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from dswb.errors import UserError
from dswb.rundir import (ControlReader, EventTail, EventWriter, create_run_dir, effective_state, find_runs,
                         read_events, read_status, resolve_run, send_command, write_status)
from dswb.rundir.status import new_status


def test_run_dir_is_owner_only(tmp_path):
    paths = create_run_dir(tmp_path / "runs" / "r1")
    assert stat.S_IMODE(os.stat(paths.root).st_mode) == 0o700


def test_event_tail_skips_torn_last_line_until_complete(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []  # file does not exist yet
    writer = EventWriter(path)
    writer.emit("metrics", "pretrain", 1, metrics={"loss": 2.0, "bad": float("nan")})
    with open(path, "a") as f:
        f.write('{"t": 1, "kind": "metrics", "stage": "pretrain", "step": 2, "metr')
    events = tail.read_new()
    assert [e["step"] for e in events] == [1]
    assert events[0]["metrics"]["bad"] is None  # NaN written as null, the line is standard JSON
    with open(path, "a") as f:
        f.write('ics": {"loss": 1.5}}\n')
    assert [e["metrics"]["loss"] for e in tail.read_new()] == [1.5]
    assert tail.read_new() == []
    assert len(read_events(path)) == 2
    assert read_events(path, kinds=("eval",)) == []


def test_status_is_replaced_atomically_and_lost_runs_are_detected(tmp_path):
    path = tmp_path / "status.json"
    assert read_status(path) is None
    status = new_status("pretrain", 10)
    status["state"] = "running"
    write_status(path, status)
    assert read_status(path)["state"] == "running"
    assert effective_state(read_status(path)) == "running"  # our own pid is alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status["pid"] = dead.pid
    write_status(path, status)
    assert effective_state(read_status(path)) == "lost"
    assert not list(tmp_path.glob(".status-*"))  # no temporary files left behind
    status["state"] = "finished"
    write_status(path, status)
    assert effective_state(read_status(path)) == "finished"


def test_control_commands_reach_a_reader_started_before_them(tmp_path):
    paths = create_run_dir(tmp_path / "r")
    send_command(paths.root, "stop")  # written before the reader started: ignored
    reader = ControlReader(paths.root)
    assert reader.poll() == []
    send_command(paths.root, "pause")
    send_command(paths.root, "checkpoint")
    assert reader.poll() == ["pause", "checkpoint"]
    assert stat.S_IMODE(os.stat(paths.control).st_mode) == 0o600
    with pytest.raises(UserError, match="unknown control command"):
        send_command(paths.root, "explode")


def test_find_and_resolve_runs(tmp_path):
    root = tmp_path / "runs"
    for name in ("20260101-000000-a", "20260102-000000-b"):
        p = create_run_dir(root / name)
        p.config.write_text("")
    assert [r.run_id for r in find_runs(root)] == ["20260102-000000-b", "20260101-000000-a"]
    assert resolve_run("latest", root).run_id == "20260102-000000-b"
    assert resolve_run("-a", root).run_id == "20260101-000000-a"
    with pytest.raises(UserError, match="ambiguous"):
        resolve_run("2026", root)
    with pytest.raises(UserError, match="no run 'zzz'"):
        resolve_run("zzz", root)
    assert find_runs(tmp_path / "missing") == []
    json.dumps([r.run_id for r in find_runs(root)])
