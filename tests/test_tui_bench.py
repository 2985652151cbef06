"""`dswb bench tui` pieces at tiny sizes (the real figures come from `dswb bench tui`)."""

from __future__ import annotations

import pytest

from dswb.bench import tui as bench

pytestmark = pytest.mark.timeout(120)


def test_ingest_reports_rate_and_memory():
    result = bench.ingest(3_000)
    assert result["events"] == 3_001 and result["loss_points"] == 3_000
    assert result["events_per_s"] > 0 and result["rss_after_mb"] > 0


def test_redraw_draws_a_bounded_number_of_points():
    rows = bench.redraw([50, 20_000], repeats=1)
    assert {r["terminal"] for r in rows} == {"200x60", "80x24"}
    for row in rows:
        assert row["plots"] == 4 and row["median_ms"] > 0
    wide = {r["points"]: r["drawn_per_plot"] for r in rows if r["terminal"] == "200x60"}
    assert wide[50] == 2 * 51 - 1, "short series are drawn whole (loss: train + val)"
    assert wide[20_000] < 500, "a long series is cut to about twice the plot width"


def test_format_table_names_every_goal():
    result = {
        "quick": True,
        "first_frame": {"runs_list": {"median_s": 0.5, "min_s": 0.4, "exit_median_s": 0.6, "repeats": 1},
                        "attach": {"median_s": 0.7, "min_s": 0.6, "exit_median_s": 0.8, "repeats": 1}},
        "redraw": [{"points": 1_000_000, "terminal": "200x60", "median_ms": 40.0, "max_ms": 45.0, "plots": 4,
                    "drawn_per_plot": 224}],
        "ingest": {"events": 1_000_001, "seconds": 10.0, "events_per_s": 100_000.1, "rss_before_mb": 28,
                   "rss_after_mb": 35, "series": 13, "values_held": 30_000, "loss_points": 1_000_000,
                   "file_mb": 361, "write_s": 12},
        "goals": bench.GOALS,
    }
    table = bench.format_table(result)
    assert "met   first frame < 1 s" in table
    assert "met   redraw < 50 ms at 1,000,000 points" in table
    assert "met   ingest > 50,000 events/s" in table
    result["redraw"][0]["median_ms"] = 80.0
    assert "MISS  redraw" in bench.format_table(result)
