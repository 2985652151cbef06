"""The follower thread, the batch reader and the run model, without a running app."""

from __future__ import annotations

import json
import os
import socket
import time

from fixtures.tui_support import FIXTURE_RUNS, RUN_IDS, copy_runs

from dswb.rundir import EventTail, RunPaths, read_events
from dswb.stats import RunningStats
from dswb.tui.follower import RunFollower, scan_runs
from dswb.tui.messages import RunUpdated
from dswb.tui.model import RunModel
from dswb.tui.synthetic import FIXTURE_SPECS, RunSpec, run_events, write_run


def line(event: dict) -> bytes:
    return (json.dumps(event) + "\n").encode()


def test_event_tail_waits_for_torn_lines_and_missing_files(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []  # no file yet
    full = line({"kind": "log", "step": 1}) + line({"kind": "log", "step": 2})
    torn = line({"kind": "metrics", "step": 3, "metrics": {"loss": 1.5}})
    path.write_bytes(full + torn[:10])
    assert [e["step"] for e in tail.read_new()] == [1, 2]
    assert tail.read_new() == []  # the torn line stays unread
    with open(path, "ab") as f:
        f.write(torn[10:])
    assert [e["step"] for e in tail.read_new()] == [3]


def test_event_tail_skips_malformed_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(line({"step": 1}) + b"{not json\n\n" + line({"step": 2}) + b"[1, 2]\n")
    tail = EventTail(path)
    assert [e["step"] for e in tail.read_new()] == [1, 2]
    assert tail.bad_lines == 1


def test_model_folds_a_fixture_like_an_independent_reader():
    paths = RunPaths(FIXTURE_RUNS / RUN_IDS["finished"])
    model = RunModel(paths)
    tail = EventTail(paths.events)
    while batch := tail.read_new(4096):  # many small batches
        model.ingest(batch)
    events = read_events(paths.events)
    oracle = RunningStats()
    for e in events:
        if e["kind"] == "metrics":
            oracle.update(e["metrics"]["loss"])
    stage = model.stages["pretrain"]
    summary = stage.summaries()["loss"]
    assert model.events == len(events)
    assert summary["count"] == oracle.count == 300
    assert abs(summary["mean"] - oracle.mean) < 1e-9 and abs(summary["std"] - oracle.std) < 1e-9
    assert stage.total_steps == 300 and stage.state == "finished"
    assert stage.eval_last["task_acc"] > 0.5
    assert model.system_last["cpu_pct"] > 0
    assert model.batching["hist"]["counts"]
    assert [a["code"] for a in model.alerts] == ["loss_spike"]
    assert model.end_state == "finished"


def test_follower_coalesces_updates_until_acknowledged(tmp_path):
    root = copy_runs(tmp_path, ("live",))
    paths = RunPaths(root / RUN_IDS["live"])
    posted: list = []
    follower = RunFollower(paths, posted.append, interval=0.01, chunk_bytes=2048)
    follower.start()
    try:
        assert follower.caught_up.wait(5)
        rest = run_events(FIXTURE_SPECS["live"])[paths.events.read_text().count("\n"):]
        for event in rest[:50]:  # a fast writer: 50 appends while nobody reads
            with open(paths.events, "a") as f:
                f.write(json.dumps(event) + "\n")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and follower.model.events < 168 + 50:
            time.sleep(0.01)
        assert follower.model.events == 168 + 50
        assert len(posted) == 1, "a waiting update is replaced, not queued again"
        assert isinstance(posted[0], RunUpdated) and posted[0].follower is follower
        follower.acknowledge()
        with open(paths.events, "a") as f:
            f.write(json.dumps(rest[50]) + "\n")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(posted) < 2:
            time.sleep(0.01)
        assert len(posted) == 2, "after the app read the model, the next change posts again"
    finally:
        follower.stop()
    assert not follower.is_alive()


def test_follower_survives_a_run_directory_that_appears_later(tmp_path):
    paths = RunPaths(tmp_path / "late-run")
    posted: list = []
    follower = RunFollower(paths, posted.append, interval=0.01)
    follower.start()
    try:
        assert follower.caught_up.wait(5)
        write_run(tmp_path, RunSpec("late-run", stages=[("pretrain", 20)]))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and follower.model.state != "finished":
            follower.acknowledge()
            time.sleep(0.01)
        assert follower.model.state == "finished"
        assert follower.model.stages["pretrain"].last_step == 20
        assert follower.error is None
    finally:
        follower.stop()


def test_scan_runs_reports_states_and_marks_dead_processes_lost(tmp_path):
    root = copy_runs(tmp_path)
    lost = root / RUN_IDS["live"] / "status.json"
    status = json.loads(lost.read_text())
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    status.update(host=socket.gethostname(), pid=dead)
    lost.write_text(json.dumps(status))
    rows = {r.run_id: r for r in scan_runs(root)}
    assert list(rows) == sorted(rows, reverse=True), "newest first"
    assert rows[RUN_IDS["finished"]].state == "finished"
    assert rows[RUN_IDS["failed"]].state == "failed"
    assert "not finite" in rows[RUN_IDS["failed"]].error
    assert rows[RUN_IDS["live"]].state == "lost"
    assert rows[RUN_IDS["finished"]].loss is not None and rows[RUN_IDS["finished"]].step == 300
    assert scan_runs(tmp_path / "missing") == []


def test_fixtures_are_reproducible(tmp_path):
    from dswb.tui.synthetic import write_fixtures

    write_fixtures(tmp_path)
    for run_id in RUN_IDS.values():
        for name in ("events.jsonl", "status.json", "config.toml", "train.log"):
            assert (tmp_path / run_id / name).read_bytes() == (FIXTURE_RUNS / run_id / name).read_bytes(), \
                f"{run_id}/{name} differs: run tests/fixtures/make_fixtures.py"


def test_line_tail_reads_only_the_end_of_a_big_log_and_waits_for_torn_lines(tmp_path):
    from dswb.rundir.events import LineTail

    path = tmp_path / "train.log"
    path.write_text("".join(f"2025-01-01 12:00:00 INFO    line {i}\n" for i in range(10_000)))
    tail = LineTail(path, tail_bytes=4096)
    lines = tail.read_text()
    assert lines[-1].endswith("line 9999") and len(lines) < 200
    assert all(line.startswith("2025-01-01") for line in lines), "the cut first line is dropped"
    with open(path, "a") as f:
        f.write("2025-01-01 12:00:01 WARNING half")
    assert tail.read_text() == []
    with open(path, "a") as f:
        f.write(" a line\n")
    assert tail.read_text() == ["2025-01-01 12:00:01 WARNING half a line"]
    assert LineTail(tmp_path / "missing.log").read_text() == []


def test_model_prefers_train_log_lines_over_log_events():
    from dswb.tui.model_logs import log_level

    model = RunModel(RunPaths(FIXTURE_RUNS / RUN_IDS["failed"]))
    model.ingest(read_events(model.paths.events))
    source, lines, total = model.log_view()
    assert source == "events" and total == model.logs_total
    assert lines[-1]["message"] == "training failed: non-finite loss"
    model.ingest_log_lines(["2025-01-01 12:00:00 ERROR   boom", "plain"])
    source, lines, total = model.log_view()
    assert source == "train.log" and total == 2 and [line["level"] for line in lines] == ["error", "info"]
    assert log_level("x WARNING y") == "warning"


def test_a_launch_that_dies_before_logging_shows_its_output(tmp_path):
    paths = RunPaths(tmp_path / "20250101-000000-broken")
    paths.root.mkdir()
    paths.stdout.write_text("error: data.paths: no such file 'corpus.txt'\n")
    follower = RunFollower(paths, lambda message: None)
    follower.poll_once()
    source, lines, total = follower.model.log_view()
    assert source == "process.out" and total == 1 and lines[0]["message"].startswith("error: data.paths") and lines[0]["level"] == "error"
