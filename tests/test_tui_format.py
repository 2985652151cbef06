"""Formatting helpers of the dashboard."""

from __future__ import annotations

import math

from dswb.tui.format import bar, fmt_tick, nice_ticks
from dswb.util.fmt import fmt_age, fmt_duration, fmt_num


def test_fmt_num():
    assert fmt_num(None) == "-"
    assert fmt_num(1.23456) == "1.235"
    assert fmt_num(13480.3) == "13,480"
    assert fmt_num(3e-5) == "3.000e-05"
    assert fmt_num(42) == "42"
    assert fmt_num(math.nan) == "nan"


def test_durations_and_ages():
    assert fmt_duration(None) == "-"
    assert fmt_duration(42) == "42s"
    assert fmt_duration(185) == "3m05s"
    assert fmt_duration(3 * 3600 + 120) == "3h02m"
    assert fmt_age(100.0, 112.0) == "12s ago"


def test_nice_ticks_are_round_and_inside_the_range():
    ticks = nice_ticks(1, 1_000_000, 5)
    assert ticks == [200_000, 400_000, 600_000, 800_000, 1_000_000]
    assert [fmt_tick(t) for t in ticks] == ["200k", "400k", "600k", "800k", "1M"]
    assert nice_ticks(0.0, 1.0, 4) == [0.0, 0.25, 0.5, 0.75, 1.0] or nice_ticks(0.0, 1.0, 4) == [0.0, 0.5, 1.0]
    assert nice_ticks(5, 5, 3) == [5]


def test_bar_fills_proportionally():
    assert bar(0.0, 4) == "    "
    assert bar(1.0, 4) == "████"
    assert bar(0.5, 4) == "██  "
