"""Streaming statistics per metric in O(1) memory.

This is what the blog's sketch (see the README) computes in its `TrainingMonitor.get_statistics` (mean, std, min, max), without
keeping every value: Welford's update for mean/variance, plus min, max, last value and an
exponential moving average. `minmax_downsample` thins a long series for a plot without losing
its spikes (`dswb runs plot` and the dashboard's charts). Standard library only, so the engine,
the CLI and the TUI share it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence


@dataclass
class RunningStats:
    """Count, mean, std, min, max, last and EMA of a stream of numbers."""

    ema_decay: float = 0.9
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    last: float = math.nan
    ema: float = math.nan

    def update(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            return
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.last = value
        self.ema = value if self.count == 1 else self.ema_decay * self.ema + (1 - self.ema_decay) * value

    @property
    def std(self) -> float:
        """Population standard deviation (numpy's default, as in the blog's sketch); nan when values near
        the float limit overflowed the running sums, never an exception."""
        if self.count <= 1:
            return 0.0
        var = self.m2 / self.count
        return math.sqrt(var) if var >= 0 else math.nan

    def summary(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min,
                "max": self.max, "last": self.last, "ema": self.ema}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunningStats":
        return cls(**data)


@dataclass
class StatsBook:
    """One `RunningStats` per metric name."""

    ema_decay: float = 0.9
    by_name: dict[str, RunningStats] = field(default_factory=dict)

    def update(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            stats = self.by_name.get(name)
            if stats is None:
                stats = self.by_name[name] = RunningStats(self.ema_decay)
            stats.update(value)

    def summaries(self) -> dict[str, dict[str, float]]:
        return {name: s.summary() for name, s in sorted(self.by_name.items())}

    def to_dict(self) -> dict:
        return {"ema_decay": self.ema_decay, "by_name": {k: v.to_dict() for k, v in self.by_name.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "StatsBook":
        book = cls(data.get("ema_decay", 0.9))
        book.by_name = {k: RunningStats.from_dict(v) for k, v in data.get("by_name", {}).items()}
        return book


def minmax_downsample(xs: Sequence[float], ys: Sequence[float], n_out: int) -> tuple[list[float], list[float]]:
    """At most `n_out` points: the minimum and the maximum of each of `(n_out - 2) // 2` buckets
    of equal count, plus the first and last input points (so the x range is exact).

    Points keep their x order, so a line through them shows every spike of the original (unlike
    striding or averaging), and plotting costs the same whatever the series length. Series of at
    most `n_out` points, or an `n_out` below 4, come back unchanged (as lists).
    """
    n = len(xs)
    if n <= n_out or n_out < 4:
        return list(xs), list(ys)
    buckets = max(1, (n_out - 2) // 2)
    out_x: list[float] = [xs[0]]
    out_y: list[float] = [ys[0]]
    inner = n - 2
    for b in range(buckets):
        lo = 1 + b * inner // buckets
        hi = 1 + (b + 1) * inner // buckets
        if hi <= lo:
            continue
        seg = ys[lo:hi]
        i_min = lo + seg.index(min(seg))
        i_max = lo + seg.index(max(seg))
        for i in sorted({i_min, i_max}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    out_x.append(xs[-1])
    out_y.append(ys[-1])
    return out_x, out_y
