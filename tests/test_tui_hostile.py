"""Viewers never die from data (issue 10): hostile events, lines and status files fed to the
dashboard's model, its widgets' renderers, the follower, the runs scanner and `dswb watch`.

Property-based (hypothesis): generated events with wrong types, huge and non-finite numbers,
megabytes of text, control characters and unknown kinds; generated raw lines (binary, torn,
nested); generated status files. Each must be taken without an exception, and what the model
keeps must have the shapes the widgets expect.
"""

from __future__ import annotations

import json
import math
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from dswb.rundir import RunPaths
from dswb.rundir.pipeline import pipeline_from_events
from dswb.tui import chart
from dswb.tui.follower import RunFollower, scan_runs
from dswb.tui.format import fmt_pct, state_badge
from dswb.tui.model import RunModel
from dswb.tui.sanitize import clean_status
from dswb.tui.widgets.alerts_panel import render_alerts
from dswb.tui.widgets.batching_panel import histogram_lines, render_batching
from dswb.tui.widgets.fp8_panel import fp8_rows
from dswb.tui.widgets.log_tail import format_line
from dswb.tui.widgets.rl_facts import render_rl_facts
from dswb.tui.widgets.run_header import HeaderInfo, render_header
from dswb.tui.widgets.run_progress import render_progress
from dswb.tui.widgets.samples_panel import render_samples
from dswb.tui.widgets.system_panel import render_system
from dswb.util.fmt import cut_text, fmt_age, fmt_duration, fmt_num

HOSTILE_FLOATS = st.sampled_from([1e308, -1e308, math.inf, -math.inf, math.nan, 5e-324, -0.0, 1e-310])
HUGE_INTS = st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 63, 2 ** 53 + 1, -1])
WEIRD_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("\x00\x1b[2J\x07\r\n\t\x7f\x9b\ud800é漢"), max_size=30),
    st.sampled_from(["x" * 70_000, "\x1b]0;pwned\x07", "a\nb\rc", ""]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), HUGE_INTS, st.floats(allow_nan=True), HOSTILE_FLOATS,
                    WEIRD_TEXT)
JSON_LIKE = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                         max_leaves=12)
KINDS = st.one_of(st.sampled_from(["metrics", "eval", "system", "run_start", "stage_start", "stage_end", "run_end",
                                   "batching", "fp8", "samples", "log", "alert", "checkpoint", "control", "weird"]),
                  JSON_LIKE)
METRIC_NAMES = st.one_of(st.sampled_from(["loss", "lr", "reward", "kl", "clip_ratio", "task_acc", "test_acc",
                                          "pair_acc", "cpu_pct", "disk_free_gb", "timing/generation_s",
                                          "rewards/rm/mean"]), st.text(max_size=12))
METRICS = st.one_of(st.dictionaries(METRIC_NAMES, st.one_of(SCALARS, JSON_LIKE), max_size=6), JSON_LIKE)


@st.composite
def hostile_events(draw):
    event = {"kind": draw(KINDS)}
    for key, value in (("t", st.one_of(st.floats(1e9, 2e9), SCALARS)), ("stage", st.one_of(
            st.sampled_from(["pretrain", "sft", "rm", "ppo", "grpo"]), SCALARS, JSON_LIKE)),
            ("step", st.one_of(st.integers(-5, 500), SCALARS)), ("metrics", METRICS)):
        if draw(st.booleans()):
            event[key] = draw(value)
    extra = draw(st.dictionaries(st.sampled_from(
        ["total_steps", "model", "data", "state", "error", "final_path", "hist", "layers", "samples", "message",
         "level", "code", "explain", "config", "cmd", "path", "reason", "resumed", "seconds"]),
        JSON_LIKE, max_size=4))
    event.update(extra)
    if event.get("kind") == "samples" and draw(st.booleans()):
        event["samples"] = draw(st.lists(st.dictionaries(st.sampled_from(
            ["prompt", "completion", "reward", "rewards", "advantage", "length", "ended"]), JSON_LIKE), max_size=3))
    return event


def model() -> RunModel:
    return RunModel(RunPaths(__import__("pathlib").Path("/nonexistent/run")))


def render(renderable) -> str:
    console = Console(width=100, file=__import__("io").StringIO(), color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


def render_model(m: RunModel) -> None:
    """Everything the dashboard would show of a model, rendered to text."""
    stage = m.shown_stage()
    summaries = stage.summaries() if stage else {}
    render(render_system(m.system_last))
    render(render_alerts(list(m.alerts), len(m.alerts)))
    render(render_batching(m.batching, summaries))
    fp8_rows(m.fp8_last)
    render(render_samples(m.samples[-1] if m.samples else None, m.samples_total))
    render(render_rl_facts(stage.last_metrics if stage else {}))
    for row in m.pipeline():
        row.cells()
    source, lines, total = m.log_view()
    for entry in lines:
        render(format_line(entry))
    step, total_steps, eta = m.progress()
    render(render_progress(step, total_steps, eta, None, m.state, "1s ago"))
    render(render_header(HeaderInfo(m.run_id, m.state, stage.name if stage else "-", 1, len(m.stages), step,
                                    total_steps, m.last_loss(), m.error)))
    for s in m.stages.values():
        for history in list(s.series.values()) + list(s.eval_series.values()):
            xs, ys = history.points()
            pic, _ = chart.picture("t", [chart.Series("a", xs, ys)], 60, 12, x_end=s.total_steps or None)
            chart.render(pic)
        for values in summaries.values():
            [fmt_num(v) for v in values.values()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_events(), max_size=12), st.lists(hostile_events(), max_size=6))
def test_model_takes_any_event_and_every_view_renders(batch1, batch2):
    m = model()
    m.ingest(batch1)
    m.ingest(batch2)
    m.ingest([1, "x", None, [], {"kind": "metrics"}])  # not even objects
    assert m.events == len(batch1) + len(batch2) + 5
    for stage in m.stages.values():
        assert all(isinstance(name, str) and len(name) <= 100 for name in stage.series)
        assert all(v is None or isinstance(v, float) for v in stage.last_metrics.values())
        assert isinstance(stage.total_steps, int) and isinstance(stage.last_step, int)
    assert all(isinstance(v, (float, type(None))) for v in m.system_last.values())
    assert all(isinstance(a["message"], str) and len(a["message"]) < 1100 for a in m.alerts)
    render_model(m)


@settings(max_examples=120, deadline=None)
@given(JSON_LIKE)
def test_widget_renderers_take_any_value(value):
    render(render_system(value))
    render(render_system({"cpu_pct": value, "disk_free_gb": value, "gpu_util_pct": value, "gpu_mem_used_mb": value,
                          "gpu_mem_total_mb": value}))
    render(render_alerts([value, {"code": value, "message": value, "level": value, "step": value}], 3))
    render(render_batching(value, value))
    render(render_batching({"hist": {"edges": value, "counts": value}, "metrics": value}, {"pad_efficiency": value}))
    histogram_lines(value)
    if isinstance(value, dict):
        fp8_rows(value)
    render(render_samples(value, value))
    render(render_samples({"samples": [value, {"prompt": value, "rewards": value, "reward": value}]}, 1))
    render(render_rl_facts(value))
    render(format_line(value))
    render(format_line({"level": value, "message": value, "stage": value}))
    render(render_progress(value, value, value, value, "running", "now"))
    for fmt in (fmt_num, fmt_duration, fmt_pct, cut_text):
        assert isinstance(fmt(value), str)
    assert isinstance(fmt_age(value, 1e9), str)
    assert isinstance(state_badge(value)[0], str)
    assert clean_status(value) is None or isinstance(clean_status(value), dict)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), HUGE_INTS, st.integers(), st.none(),
                          WEIRD_TEXT), max_size=40),
       st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-10, 10 ** 6), HUGE_INTS), max_size=40),
       st.integers(0, 250), st.integers(0, 70), st.one_of(st.none(), st.floats(allow_nan=True), st.integers()))
def test_chart_draws_anything_at_any_size(ys, xs, width, height, x_end):
    xs = xs[: len(ys)] + list(range(len(xs), len(ys)))
    pic, drawn = chart.picture("metric", [chart.Series("a", xs, ys), chart.Series("b", ys, xs)], width, height,
                               x_end=x_end)
    lines = chart.render(pic)
    assert len(lines) == height
    assert all(sum(len(text) for text, _ in line) == width for line in lines[1:])


def test_extreme_values_are_plotted_at_the_limit_not_dropped():
    pic, drawn = chart.picture("loss", [chart.Series("a", [1, 2, 3, 4], [1.0, 1e308, -1e308, 2.0])], 60, 12)
    assert drawn == 4 and pic.frame is not None
    assert pic.frame.y1 >= 1e300 and pic.frame.y0 <= -1e300


RAW_LINES = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    st.builds(lambda e: json.dumps(e, default=str).encode(), hostile_events()),
    st.sampled_from([b"[1, 2]", b"null", b'"text"', b"{", b'{"kind": "metrics", "metrics": {"loss": 1e999}}',
                     b'{"kind": "metrics", "step": 3, "metrics": {"loss": NaN, "lr": -Infinity}}',
                     b"[" * 100 + b"]" * 100, b'{"kind": "log", "message": "' + b"m" * 100_000 + b'"}',
                     b"\xff\xfe\x00junk", b'{"kind": "metrics", "metrics": {"loss": 1' + b"0" * 400 + b"}}"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.lists(RAW_LINES, max_size=10), st.binary(max_size=30))
def test_follower_reads_any_file_and_keeps_good_lines(tmp_path_factory, lines, torn):
    run = tmp_path_factory.mktemp("run")
    good = json.dumps({"t": 1.7e9, "kind": "metrics", "stage": "pretrain", "step": 999, "metrics": {"loss": 0.5}})
    (run / "events.jsonl").write_bytes(b"\n".join(lines + [good.encode()]) + b"\n" + torn.replace(b"\n", b""))
    (run / "status.json").write_bytes(b'{"state": "runn')  # torn status
    follower = RunFollower(RunPaths(run), post=lambda message: None)
    for _ in range(3):
        follower.poll_safely()
    m = follower.model
    assert m.state == "unknown"
    render_model(m)
    if follower.error is None:  # the reader parsed the chunk: the good line after the junk is there
        assert m.stages["pretrain"].series["loss"].last_y == 0.5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(JSON_LIKE, st.dictionaries(st.sampled_from(
    ["state", "pid", "host", "stage", "stages", "step", "total_steps", "updated", "error", "last_metrics", "eta_s"]),
    JSON_LIKE)))
def test_runs_list_takes_any_status_file(tmp_path_factory, status):
    root = tmp_path_factory.mktemp("runs")
    run = root / "20250101-000000-x"
    run.mkdir()
    (run / "config.toml").write_text("")
    (run / "status.json").write_text(json.dumps(status, default=str))
    rows = scan_runs(root, {})
    for row in rows:
        assert isinstance(row.state, str) and isinstance(row.stage, str)
        assert isinstance(row.step, int) and isinstance(row.total_steps, int)
        assert row.loss is None or math.isfinite(row.loss)
        assert row.error is None or (isinstance(row.error, str) and len(row.error) < 1100)


def test_pipeline_table_from_hostile_events():
    events = [{"kind": "run_start", "config": {"run": {"stages": ["pretrain", 5, "ppo"]}}},
              {"kind": "stage_start", "stage": "pretrain", "total_steps": 1e308},
              {"kind": "eval", "stage": "pretrain", "metrics": {"task_acc": "high", "test_acc": math.inf}},
              {"kind": "eval", "stage": "pretrain", "metrics": {"task_acc": 0.25, "test_acc": 0.2}},
              {"kind": "eval", "stage": ["x"], "metrics": {}}, "junk", None,
              {"kind": "stage_end", "stage": "pretrain", "state": {"x": 1}}]
    rows = pipeline_from_events(events)
    assert [r.stage for r in rows] == ["pretrain", "ppo"]
    assert rows[0].cells() == ("pretrain", "finished", "0", "20.0%", "25.0%", "-", "-")
    assert rows[1].state == "pending"


def test_cut_text_marks_what_it_cut_and_neutralises_control_characters():
    text = cut_text("x" * 2_000_000, 100)
    assert text == "x" * 100 + "… [cut, 1.9 MiB]"
    assert cut_text("a\x1b[2Jb\x07c\ud800", 50) == "a\ufffd[2Jb\ufffdc\ufffd"
    assert cut_text("one\ntwo\tthree", 50, one_line=True) == "one⏎two three"
    assert set(string.printable) >= set(cut_text({"k": [1, 2]}, 50))


def test_numbers_out_of_float_range_format_without_error():
    assert fmt_num(10 ** 400) == "huge" and fmt_num(-(10 ** 400)) == "-huge"
    assert fmt_num(1e308) == "1.000e+308"
    assert fmt_duration(1e308) == ">99999d" and fmt_duration(10 ** 400) == "-"
    assert fmt_pct(10 ** 400) == "N/A"
    assert fmt_num("x" * 1000).endswith("[cut, 1000 B]")


@pytest.mark.parametrize("status", [[1, 2], "running", 5, None, {"state": ["x"], "pid": 10 ** 30, "step": "5"}])
def test_model_status_of_any_shape(status):
    m = model()
    m.set_status(status)
    assert isinstance(m.state, str)
    step, total, eta = m.progress()
    assert isinstance(step, int) and isinstance(total, int)
