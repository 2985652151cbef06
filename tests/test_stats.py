"""Streaming statistics equal the batch statistics the blog's sketch computed with numpy, in O(1)
memory."""

from __future__ import annotations

import math
import random
import statistics

from dswb.stats import RunningStats, StatsBook


def test_running_stats_match_batch_statistics():
    rng = random.Random(0)
    values = [rng.gauss(3.0, 2.0) for _ in range(5000)]
    stats = RunningStats(ema_decay=0.5)
    for v in values:
        stats.update(v)
    assert stats.count == len(values)
    assert math.isclose(stats.mean, statistics.fmean(values), rel_tol=1e-12)
    assert math.isclose(stats.std, statistics.pstdev(values), rel_tol=1e-9)
    assert stats.min == min(values) and stats.max == max(values) and stats.last == values[-1]
    ema = values[0]
    for v in values[1:]:
        ema = 0.5 * ema + 0.5 * v
    assert math.isclose(stats.ema, ema)


def test_non_finite_values_are_ignored_and_book_round_trips():
    book = StatsBook()
    book.update({"loss": 2.0, "lr": 1e-3, "flag": True, "name": "x"})
    book.update({"loss": float("nan")})
    book.update({"loss": 4.0})
    summary = book.summaries()
    assert set(summary) == {"loss", "lr"}
    assert summary["loss"]["count"] == 2 and summary["loss"]["mean"] == 3.0
    again = StatsBook.from_dict(book.to_dict())
    assert again.summaries() == summary


def test_values_near_the_float_limit_never_raise():
    from dswb.stats import RunningStats

    stats = RunningStats()
    for value in (1e308, -1e308, 1e308, -1e308):
        stats.update(value)
    summary = stats.summary()
    assert summary["count"] == 4 and summary["max"] == 1e308 and summary["min"] == -1e308
    std = summary["std"]
    assert std != std or std >= 0   # nan (overflowed) or a real number: never an exception
