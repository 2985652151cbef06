"""The run-file readers and `dswb runs show | plot | list` take anything a damaged or hostile run
directory holds: non-JSON and binary lines, wrong types, unknown kinds, NaN/Inf/1e308 and huge
integers, deep nesting, lone surrogates, huge strings, lines longer than a read, torn last lines,
and truncated, missing or nonsense status.json files. Property tests (hypothesis) generate them."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.rundir import EventTail, read_events, read_status, write_status
from dswb.rundir.events import EVENT_KINDS, LineTail
from dswb.rundir.status import effective_state

runner = CliRunner()
HUGE = "x" * 2_000_000

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10 ** 40, max_value=10 ** 40),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324]),
                    st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=10)
metric_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324]),
                          st.integers(min_value=-10 ** 400, max_value=10 ** 400), values)
events = st.fixed_dictionaries({}, optional={
    "t": st.one_of(st.floats(min_value=1e9, max_value=2e9), values),
    "kind": st.one_of(st.sampled_from(EVENT_KINDS + ("bogus",)), values),
    "stage": st.one_of(st.sampled_from(["pretrain", "sft"]), values),
    "step": st.one_of(st.integers(min_value=0, max_value=100), values),
    "metrics": st.one_of(st.dictionaries(st.sampled_from(["loss", "lr", "val_loss", "cpu_pct", "weird"]),
                                         metric_values, max_size=5), values),
    "message": st.one_of(st.text(max_size=40), values), "level": values, "code": values, "path": values,
    "reason": values,
})
raw_lines = st.one_of(
    st.binary(max_size=120),
    st.sampled_from([
        "[" * 5000, '{"kind": "alert", "message": "\\ud800 lone", "code": "\\udfff"}',
        '{"kind": "metrics", "step": 1' + "0" * 400 + ', "metrics": {"loss": 1e999}}',
        '{"kind": "metrics", "step": 3, "metrics": {"loss": NaN, "lr": -Infinity}}',
        '{"kind": "alert", "step": 2, "level": "error", "code": "x", "message": "' + HUGE + '"}',
        '{"kind": "metrics", "step": "seven", "metrics": null}', "null", "[1, 2]", '"text"', "",
        '{"kind": "log", "message": "\\u001b[2J\\u001b[31mred\\nnew line"}',
    ]).map(str.encode),
)
lines = st.one_of(events.map(lambda e: json.dumps(e, allow_nan=True, default=str).encode()), raw_lines)
files = st.tuples(st.lists(lines, max_size=12), st.booleans())   # lines, torn last line?
statuses = st.one_of(
    st.none(), st.binary(max_size=80), values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.fixed_dictionaries({}, optional={k: values for k in ("state", "pid", "host", "stage", "stages", "step",
                                                             "total_steps", "started", "updated", "eta_s",
                                                             "error", "last_metrics", "pid_started")})
    .map(lambda d: json.dumps(d, allow_nan=True, default=str).encode()),
    st.just(b'{"state": "running", "pid": 1, "step": 3, "total'),   # truncated
)


def write_file(path: Path, content: tuple[list[bytes], bool]) -> None:
    body, torn = content
    data = b"\n".join(body) + (b"" if torn or not body else b"\n")
    path.write_bytes(data)


def assert_clean(event: dict) -> None:
    assert isinstance(event, dict)
    t = event.get("t")
    assert t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t))
    for key in ("kind", "stage"):
        assert event.get(key) is None or isinstance(event[key], str)
    assert event.get("step") is None or type(event["step"]) is int
    if "metrics" in event:
        assert isinstance(event["metrics"], dict)
        for v in event["metrics"].values():
            assert v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)))
    json.dumps(event, ensure_ascii=False, default=str).encode("utf-8")   # every string is printable


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=files)
def test_event_reader_takes_anything(tmp_path, content):
    path = tmp_path / "events.jsonl"
    write_file(path, content)
    tail = EventTail(path)
    seen = []
    for _ in range(3):
        seen += tail.read_new(max_bytes=4096)   # small reads: lines longer than a read are skipped
    for event in seen + read_events(path):
        assert_clean(event)


def make_run(root: Path, events_content, status_content) -> Path:
    run = root / "20260101-000000-hostile"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.toml").write_text('[run]\nname = "hostile"\n')
    write_file(run / "events.jsonl", events_content)
    if status_content is None:
        (run / "status.json").unlink(missing_ok=True)
    else:
        (run / "status.json").write_bytes(status_content)
    return run


def assert_survived(result, allowed=(0,)) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in allowed, (result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output


@pytest.mark.slow   # ~0.5 s per example: five CLI commands each
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=files, status=statuses)
def test_runs_show_plot_and_list_take_anything(tmp_path, content, status):
    root = tmp_path / "runs"
    run = make_run(root, content, status)
    assert effective_state(read_status(run / "status.json")) is not None

    for args in (["runs", "show", str(run)], ["runs", "list", "--runs-root", str(root)]):
        result = runner.invoke(app, args)
        assert_survived(result)
        assert max(map(len, result.output.splitlines()), default=0) < 4000
    assert_survived(runner.invoke(app, ["runs", "show", str(run), "--json"]))
    json.loads(runner.invoke(app, ["runs", "show", str(run), "--json"]).stdout)
    # exit 2: no such metric in the file (one error line); 0: a plot
    plot = runner.invoke(app, ["runs", "plot", str(run), "-m", "loss", "--width", "60", "--height", "8", "--no-color"])
    assert_survived(plot, allowed=(0, 2))
    if plot.exit_code == 2:
        assert len(plot.stderr.strip().splitlines()) == 1


def _run_with(tmp_path: Path, *events: dict, status: dict | None = None) -> Path:
    lines = [json.dumps(e, allow_nan=True).encode() for e in events]
    run = make_run(tmp_path / "runs", (lines, False), None)
    write_status(run / "status.json", status or {"state": "finished", "pid": 1, "host": socket.gethostname(),
                                                 "stage": "pretrain", "step": 3, "total_steps": 3,
                                                 "started": time.time() - 10})
    return run


def test_runs_show_cuts_a_2mb_alert_message_with_a_marker(tmp_path):
    run = _run_with(tmp_path, {"t": 1.0, "kind": "alert", "stage": "pretrain", "step": 2, "level": "error",
                               "code": "spam", "message": HUGE},
                    status={"state": "failed", "error": "E" * 100_000, "stage": "pretrain"})
    result = runner.invoke(app, ["runs", "show", str(run)])
    assert result.exit_code == 0
    assert len(result.output) < 5000
    assert "... [cut: 2,000,000 chars]" in result.output and "... [cut: 100,000 chars]" in result.output
    as_json = json.loads(runner.invoke(app, ["runs", "show", str(run), "--json"]).stdout)
    assert as_json["alerts"][0]["message"].endswith("... [cut: 2,000,000 chars]")


def test_runs_plot_draws_extreme_values_clipped_with_a_note(tmp_path):
    run = _run_with(tmp_path, *[{"t": 1.0 + i, "kind": "metrics", "stage": "pretrain", "step": i,
                                 "metrics": {"loss": v}} for i, v in enumerate([1.0, 1e308, -1e308, 5e-324, 2.0])])
    result = runner.invoke(app, ["runs", "plot", str(run), "-m", "loss", "--width", "60", "--no-color"])
    assert result.exit_code == 0, result.output
    assert "note: 3 point(s) of loss (pretrain) beyond +-1e300 or below 1e-300 in size are drawn clipped" in result.output
    show = runner.invoke(app, ["runs", "show", str(run)])   # the running std overflows: shown as nan, no crash
    assert show.exit_code == 0 and "loss" in show.output


def test_status_json_truncated_missing_or_not_an_object_reads_as_unknown(tmp_path):
    path = tmp_path / "status.json"
    assert read_status(path) is None
    for content in (b'{"state": "runn', b"", b"\xff\xfe\x00", b"[1, 2]", b'"running"', b"[" * 5000):
        path.write_bytes(content)
        assert read_status(path) is None and effective_state(read_status(path)) == "unknown"
    path.write_bytes(json.dumps({"state": 7, "pid": 2 ** 70, "step": "three", "started": "yesterday",
                                 "last_metrics": {"loss": "low", "lr": 1e-3}, "error": {"deep": [1]}}).encode())
    status = read_status(path)
    assert status["state"] == "unknown" and status["pid"] is None and status["step"] is None
    assert status["started"] is None and status["last_metrics"] == {"lr": 1e-3} and status["error"] == '{"deep": [1]}'


def test_a_line_longer_than_a_read_is_skipped_not_waited_on(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"kind": "log", "step": 1}\n' + b"y" * 10_000 + b'\n{"kind": "log", "step": 2}\n')
    tail = EventTail(path)
    steps = []
    for _ in range(5):
        steps += [e["step"] for e in tail.read_new(max_bytes=4096)]
    assert steps == [1, 2] and tail.bad_lines == 1
    log = LineTail(path)
    assert len([line for _ in range(5) for line in log.read_text(max_bytes=4096)]) == 2
