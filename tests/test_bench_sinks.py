"""`dswb bench sinks`: its event mix and a quick run through the real TensorBoard sink, checked for what
it feeds and reports (the figures themselves are the bench's, not a test's)."""

from __future__ import annotations

import pytest

from dswb.bench import sinks as bench
from dswb.engine.telemetry.sinks.base import scalars


def test_the_event_mix_is_an_rl_stage_with_every_scalar_kind():
    events = bench.event_stream(300)
    assert events == bench.event_stream(300) and len(events) == 300
    kinds = {e["kind"] for e in events}
    assert kinds == {"metrics", "system", "eval", "samples", "log", "moe", "fp8"}
    metrics = [e for e in events if e["kind"] == "metrics"]
    assert [e["step"] for e in metrics] == list(range(1, len(metrics) + 1))
    assert len(dict(scalars(metrics[0]))) == len(bench.RL_METRICS) == 30
    moe = next(e for e in events if e["kind"] == "moe")
    assert len(dict(scalars(moe))) == 3 * 6   # 3 layers x (5 fields + bias_abs)


def test_a_quick_run_feeds_every_event_to_the_sink_and_reports_per_event_costs(capsys):
    pytest.importorskip("tensorboard")
    result = bench.run(quick=True, names=["tensorboard"])
    assert result["events"] == sum(result["mix"].values()) == bench.QUICK["events"]
    rows = result["training_thread"]
    assert set(rows) == {"none", "burst", "none paced", "paced"}
    assert [rows[k]["events"] for k in ("none", "burst", "none paced", "paced")] == [200, 200, 50, 50]
    assert all(rows[k]["dropped"] == 0 and rows[k]["failed"] == [] for k in ("burst", "paced"))
    row = result["sinks"]["tensorboard"]
    assert set(row["by_kind_us"]) == set(result["mix"]) and row["where"].endswith("sink-tensorboard/tensorboard")
    assert all(v >= 0 for v in row["by_kind_us"].values()) and row["cpu_us"] > 0
    table = bench.format_table(result)
    assert "(sinks: tensorboard)" in table and "+ sinks, 200 events/s" in table
