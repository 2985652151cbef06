"""Plot histories: the downsamplers and the bounded multi-resolution store."""

from __future__ import annotations

import math
import random

import pytest

from dswb.stats import RunningStats
from dswb.tui.history import SeriesHistory, lttb, minmax_downsample


def noisy(n: int, seed: int = 0) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    xs = list(range(n))
    ys = [math.sin(i / 50) + rng.gauss(0, 0.1) for i in xs]
    return xs, ys


def test_minmax_keeps_every_extreme_and_the_ends():
    xs, ys = noisy(10_000)
    ys[1234] = 50.0  # a spike
    ys[8765] = -50.0  # a dip
    out_x, out_y = minmax_downsample(xs, ys, 200)
    assert len(out_x) <= 200
    assert (out_x[0], out_y[0]) == (xs[0], ys[0]) and (out_x[-1], out_y[-1]) == (xs[-1], ys[-1])
    assert 50.0 in out_y and -50.0 in out_y
    assert max(out_y) == max(ys) and min(out_y) == min(ys)
    assert out_x == sorted(out_x), "points keep their x order"
    assert set(zip(out_x, out_y)) <= set(zip(xs, ys)), "only original points are returned"


def test_minmax_and_lttb_leave_short_series_alone():
    xs, ys = noisy(50)
    assert minmax_downsample(xs, ys, 100) == (xs, ys)
    assert lttb(xs, ys, 100) == (xs, ys)


def test_lttb_returns_exactly_n_points_with_ends():
    xs, ys = noisy(5_000)
    out_x, out_y = lttb(xs, ys, 300)
    assert len(out_x) == 300
    assert out_x[0] == 0 and out_x[-1] == 4_999
    assert out_x == sorted(out_x)


def test_history_is_exact_below_capacity():
    h = SeriesHistory(capacity=64)
    xs, ys = noisy(60)
    for x, y in zip(xs, ys):
        h.append(x, y)
    assert h.points() == (xs, ys)
    assert h.width == 1 and len(h) == 60


@pytest.mark.parametrize("n, capacity", [(1_000, 512), (100_000, 512), (200_000, 64)])
def test_history_memory_is_bounded_and_spikes_survive(n, capacity):
    h = SeriesHistory(capacity=capacity)
    xs, ys = noisy(n, seed=n)
    ys[n // 3] = 99.0
    h.extend(xs[: n // 2], ys[: n // 2])
    for x, y in zip(xs[n // 2:], ys[n // 2:]):
        h.append(x, y)
        assert h.stored() <= capacity + 1, "stored values stay within capacity"
    assert len(h) == n
    view_x, view_y = h.view(40)
    assert len(view_x) <= 40
    assert 99.0 in view_y, "a one-step spike is never averaged away"
    assert view_x[-1] == xs[-1] and view_y[-1] == ys[-1], "the view ends at the newest point"
    assert view_x == sorted(view_x)


def test_history_statistics_match_running_stats():
    xs, ys = noisy(20_000, seed=3)
    ys[10] = None
    ys[20] = math.nan
    h = SeriesHistory(capacity=256)
    oracle = RunningStats()
    for i in range(0, len(xs), 997):  # uneven batches, like the follower's chunks
        h.extend(xs[i:i + 997], ys[i:i + 997])
    for y in ys:
        if y is not None:
            oracle.update(y)
    summary = h.summary()
    assert summary["count"] == oracle.count == 19_998
    assert h.gaps == 2
    for key in ("mean", "std", "min", "max", "last", "ema"):
        assert summary[key] == pytest.approx(oracle.summary()[key], rel=1e-9), key


def test_history_rewinds_when_a_resumed_run_logs_steps_again():
    h = SeriesHistory(capacity=64)
    for step in range(1, 201):
        h.append(step, float(step))
    h.extend([150, 151, 152], [-1.0, -2.0, -3.0])  # resumed from the step-149 checkpoint
    xs, ys = h.points()
    assert xs == sorted(xs)
    assert xs[-1] == 152 and ys[-1] == -3.0
    assert all(x < 150 or y < 0 for x, y in zip(xs, ys)), "points after the resume step are gone"


def test_history_rejects_a_tiny_capacity():
    with pytest.raises(ValueError):
        SeriesHistory(capacity=2)
