"""Plot histories kept outside the widgets: bounded memory, cheap downsampled views.

`SeriesHistory` stores a metric as (x, y) points. Up to `capacity` points are kept exactly;
beyond that, neighbouring points are merged into buckets that remember the x and y of their
minimum and maximum (bucket widths double each time the store fills, so memory stays at
`capacity` buckets whatever the run length, and a spike is never averaged away).
`view(n)` hands a plot at most `n` points (min/max per bucket), about twice the plot width.

`minmax_downsample` (from `dswb.stats`, shared with `dswb runs plot`) and `lttb` are the pure
downsamplers, usable on any two lists. Standard library only.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from dswb.stats import minmax_downsample

Points = tuple[list[float], list[float]]


def lttb(xs: Sequence[float], ys: Sequence[float], n_out: int) -> Points:
    """Largest-Triangle-Three-Buckets: `n_out` points that keep the visual shape of the line."""
    n = len(xs)
    if n <= n_out or n_out < 3:
        return list(xs), list(ys)
    out_x, out_y = [xs[0]], [ys[0]]
    every = (n - 2) / (n_out - 2)
    a = 0
    for i in range(n_out - 2):
        start = int(i * every) + 1
        end = min(int((i + 1) * every) + 1, n - 1)
        nxt_start, nxt_end = end, min(int((i + 2) * every) + 1, n)
        if nxt_end <= nxt_start:
            nxt_end = nxt_start + 1
        avg_x = sum(xs[nxt_start:nxt_end]) / (nxt_end - nxt_start)
        avg_y = sum(ys[nxt_start:nxt_end]) / (nxt_end - nxt_start)
        ax, ay = xs[a], ys[a]
        best, best_area = start, -1.0
        for j in range(start, max(end, start + 1)):
            area = abs((ax - avg_x) * (ys[j] - ay) - (ax - xs[j]) * (avg_y - ay))
            if area > best_area:
                best, best_area = j, area
        out_x.append(xs[best])
        out_y.append(ys[best])
        a = best
    out_x.append(xs[-1])
    out_y.append(ys[-1])
    return out_x, out_y


class SeriesHistory:
    """One metric's history in bounded memory, plus its streaming statistics.

    Points are kept exactly in a tail buffer; when more than `capacity` values are held the
    tail is folded into buckets that remember the (x, y) of their minimum and of their maximum
    (two values each), and pairs of buckets merge (the bucket width doubles) until at most
    `capacity // 4` buckets remain. So at most about `capacity` values are ever held.
    Appending is O(1) amortised; `extend` is the fast path (one call per metric per batch).
    Non-finite values are counted in `gaps`, not stored. A point whose x goes back (a resumed
    run logs steps again from its checkpoint) first forgets the points at or after that x.
    """

    __slots__ = ("capacity", "width", "count", "gaps", "last_x", "last_y",
                 "n", "mean", "m2", "min", "max", "ema", "ema_decay",
                 "_bx0", "_by0", "_bx1", "_by1", "_bn", "_rx", "_ry", "_bucket_points")

    def __init__(self, capacity: int = 4096, ema_decay: float = 0.9) -> None:
        if capacity < 8:
            raise ValueError("capacity must be >= 8")
        self.capacity = capacity
        self.width = 1  # points per bucket once folding started
        self.count = 0  # points represented (buckets x width + tail)
        self.gaps = 0
        self.last_x = -math.inf
        self.last_y = math.nan
        # Streaming statistics of every finite value appended (Welford, as dswb.stats).
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.ema = math.nan
        self.ema_decay = ema_decay
        self._bx0: list[float] = []  # bucket: x, y of the minimum ...
        self._by0: list[float] = []
        self._bx1: list[float] = []  # ... and of the maximum
        self._by1: list[float] = []
        self._bn: list[int] = []  # points per bucket (the last folded one may be narrower)
        self._rx: list[float] = []  # exact tail
        self._ry: list[float] = []
        self._bucket_points: Points | None = None  # the buckets as points, until they change

    def __len__(self) -> int:
        return self.count

    def append(self, x: float, y: float | None) -> None:
        self.extend((x,), (y,))

    def extend(self, xs: Sequence[float], ys: Sequence[Any]) -> None:
        """Append points whose xs do not decrease (None, NaN and Inf are counted as gaps).

        If the first x is before the last stored one, the points at or after it are forgotten
        first (callers split a batch where x goes back; `RunModel` does).
        """
        if not xs:
            return
        if xs[0] < self.last_x:
            self._rewind(xs[0])
        self._extend_sorted(xs, ys)

    def _extend_sorted(self, xs: Sequence[float], ys: Sequence[Any]) -> None:
        n, mean, m2, lo, hi, ema = self.n, self.mean, self.m2, self.min, self.max, self.ema
        decay = self.ema_decay
        keep = 1.0 - decay
        inf = math.inf
        bad = 0
        for y in ys:
            if y is None or y != y or y == inf or y == -inf:
                bad += 1
                continue
            n += 1
            delta = y - mean
            mean += delta / n
            m2 += delta * (y - mean)
            if y < lo:
                lo = y
            if y > hi:
                hi = y
            ema = y if n == 1 else decay * ema + keep * y
        if bad:
            pairs = [(x, y) for x, y in zip(xs, ys)
                     if y is not None and y == y and y != inf and y != -inf]
            self.gaps += bad
            if not pairs:
                return
            xs = [p[0] for p in pairs]
            ys = [p[1] for p in pairs]
        self.n, self.mean, self.m2, self.min, self.max, self.ema = n, mean, m2, lo, hi, ema
        self._rx.extend(xs)
        self._ry.extend(ys)
        self.count += len(xs)
        self.last_x, self.last_y = xs[-1], ys[-1]
        if len(self._rx) + 2 * len(self._bx0) > self.capacity:
            self._fold()

    def _fold(self) -> None:
        """Fold the exact tail into buckets; merge bucket pairs while there are too many."""
        self._bucket_points = None
        w = max(self.width, 2)
        rx, ry = self._rx, self._ry
        m = (len(rx) // w) * w
        if 2 * (len(self._bx0) + m // w) + len(rx) - m > self.capacity:
            m = len(rx)  # the leftover alone is too big: it becomes one narrower bucket
        for i in range(0, m, w):
            self._add_bucket(rx, ry, i, min(i + w, m))
        del rx[:m]
        del ry[:m]
        self.width = w
        while 4 * len(self._bx0) > self.capacity:
            self._merge_pairs()

    def _add_bucket(self, rx: list, ry: list, lo: int, hi: int) -> None:
        seg = ry[lo:hi]
        y_lo, y_hi = min(seg), max(seg)
        self._bx0.append(rx[lo + seg.index(y_lo)])
        self._by0.append(y_lo)
        self._bx1.append(rx[lo + seg.index(y_hi)])
        self._by1.append(y_hi)
        self._bn.append(hi - lo)

    def _merge_pairs(self) -> None:
        bx0, by0, bx1, by1, bn = self._bx0, self._by0, self._bx1, self._by1, self._bn
        nx0, ny0, nx1, ny1, nn = [], [], [], [], []
        for i in range(0, len(bx0) - 1, 2):
            j = i if by0[i] <= by0[i + 1] else i + 1
            nx0.append(bx0[j])
            ny0.append(by0[j])
            k = i if by1[i] > by1[i + 1] else i + 1
            nx1.append(bx1[k])
            ny1.append(by1[k])
            nn.append(bn[i] + bn[i + 1])
        if len(bx0) % 2:  # an odd last bucket stays as it is
            nx0.append(bx0[-1])
            ny0.append(by0[-1])
            nx1.append(bx1[-1])
            ny1.append(by1[-1])
            nn.append(bn[-1])
        self._bx0, self._by0, self._bx1, self._by1, self._bn = nx0, ny0, nx1, ny1, nn
        self.width *= 2

    def _rewind(self, x: float) -> None:
        """Forget the points at or after `x`."""
        self._bucket_points = None
        rx, ry = self._rx, self._ry
        while rx and rx[-1] >= x:
            rx.pop()
            ry.pop()
            self.count -= 1
        if not rx:
            while self._bx0 and max(self._bx0[-1], self._bx1[-1]) >= x:
                for column in (self._bx0, self._by0, self._bx1, self._by1):
                    column.pop()
                self.count -= self._bn.pop()
        self.count = max(self.count, 0)
        if rx:
            self.last_x, self.last_y = rx[-1], ry[-1]
        elif self._bx0:
            self.last_x = max(self._bx0[-1], self._bx1[-1])
            self.last_y = self._by1[-1] if self._bx1[-1] >= self._bx0[-1] else self._by0[-1]
        else:
            self.last_x, self.last_y = -math.inf, math.nan

    @property
    def std(self) -> float:
        """Population standard deviation, like `dswb.stats.RunningStats.std`."""
        return math.sqrt(self.m2 / self.n) if self.n > 1 else 0.0

    def summary(self) -> dict[str, float]:
        """The same keys as `RunningStats.summary()`: count, mean, std, min, max, last, ema."""
        return {"count": self.n, "mean": self.mean, "std": self.std, "min": self.min,
                "max": self.max, "last": self.last_y, "ema": self.ema}

    def stored(self) -> int:
        """How many values are held (bucket ends and exact tail points)."""
        return 2 * len(self._bx0) + len(self._rx)

    def points(self) -> Points:
        """Every stored point in x order (min and max of each bucket, then the exact tail).

        The buckets change only when the tail is folded, so their points are kept between calls:
        a live plot asking every second copies lists instead of rebuilding them."""
        if self._bucket_points is None:
            xs: list[float] = []
            ys: list[float] = []
            for x0, y0, x1, y1 in zip(self._bx0, self._by0, self._bx1, self._by1):
                if x0 == x1:
                    xs.append(x0)
                    ys.append(y0)
                elif x0 < x1:
                    xs += (x0, x1)
                    ys += (y0, y1)
                else:
                    xs += (x1, x0)
                    ys += (y1, y0)
            self._bucket_points = (xs, ys)
        bx, by = self._bucket_points
        return bx + self._rx, by + self._ry

    def view(self, max_points: int) -> Points:
        """At most about `max_points` points (min/max per group), always ending at the last point."""
        xs, ys = self.points()
        if len(xs) > max_points:
            xs, ys = minmax_downsample(xs, ys, max(4, max_points))
        return xs, ys


def series_history(series: dict[str, SeriesHistory], name: str, capacity: int,
                   limit: int) -> SeriesHistory | None:
    """The history of `name` in `series`, made (with `capacity`) when it is new and `series` holds
    fewer than `limit`; None when a new name finds no room (a run with hostile metric names)."""
    history = series.get(name)
    if history is None and len(series) < limit:
        history = series[name] = SeriesHistory(capacity)
    return history
