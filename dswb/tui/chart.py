"""Line charts drawn with braille dots, as rows of styled text runs. Standard library only.

The dashboard's plots were built with plotext, which cost 20-30 ms per plot and rescaled its
axes with every new point (so a live plot changed all over at each step) and died on a value
like 1e308. Here:
- axes are stable: x runs to the stage's total steps when known (else to a rounded-up end that
  moves only every few dozen percent), y to rounded bounds that move only when the data leaves
  them, so a new step changes a few cells at the right end;
- points are binned per pixel column (min, max, first, last), which is exactly what can show,
  and `Picture` (the spans drawn per series) is the key a widget compares to skip a rebuild;
- anything not a finite number is left out; magnitudes beyond `PLOT_LIMIT` are clamped.

`picture(...)` computes what a chart shows (a comparable `Picture`), `render(picture)` its
`ChartLines`: one list of `(text, style)` runs per terminal row, where style is `"title"`,
`"axis"`, `"label"`, `"s0"`.. `"s3"` (series) or None; `changed_span` says which cells of a row
changed, so a widget repaints only those.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import Sequence

from dswb.tui.format import fmt_tick, nice_step, nice_ticks
from dswb.util.fmt import is_number

PLOT_LIMIT = 1e300  # |y| beyond this is drawn at the limit (the span of two limits stays finite)
KEEP_FILL = 0.5  # a y range is kept while the data spans at least this share of it
HEADROOM = 0.25  # when data leaves the kept range, the new one reaches this share of its span further
BRAILLE = 0x2800
# Dot bits of a braille cell, by (pixel column 0/1, pixel row 0..3 from the top).
DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))

Run = tuple[str, "str | None"]
ChartLines = list[list[Run]]


@dataclass(frozen=True)
class Series:
    """`clean`: the points are already finite floats within +-PLOT_LIMIT in x order (a
    `SeriesHistory` whose min and max are within the limit), so they need no checking."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    clean: bool = False


def finite_points(xs: Sequence, ys: Sequence) -> tuple[list[float], list[float]]:
    """The (x, y) pairs where both are finite numbers, y clamped to +-PLOT_LIMIT, in x order."""
    out_x: list[float] = []
    out_y: list[float] = []
    for x, y in zip(xs, ys):
        if not is_number(x) or not is_number(y):
            continue
        x, y = float(x), float(y)
        if x != x or y != y or x in (math.inf, -math.inf) or y in (math.inf, -math.inf):
            continue
        if abs(x) > PLOT_LIMIT:
            continue
        out_x.append(x)
        out_y.append(PLOT_LIMIT if y > PLOT_LIMIT else -PLOT_LIMIT if y < -PLOT_LIMIT else y)
    if any(out_x[i] > out_x[i + 1] for i in range(len(out_x) - 1)):
        pairs = sorted(zip(out_x, out_y), key=lambda p: p[0])
        out_x = [p[0] for p in pairs]
        out_y = [p[1] for p in pairs]
    return out_x, out_y


def nice_bounds(lo: float, hi: float, count: int = 4) -> tuple[float, float]:
    """[lo, hi] widened outward to multiples of a round step; a flat range gets some height."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi < lo:
        lo, hi = hi, lo
    scale = max(abs(lo), abs(hi))
    if hi - lo <= scale * 1e-9:  # flat (or flat within rounding): centre it
        pad = scale * 0.1 if scale > 0 else 0.5
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, count)
    a = math.floor(lo / step) * step
    b = math.ceil(hi / step) * step
    if not (math.isfinite(a) and math.isfinite(b)) or b <= a:
        return lo, hi
    return a, b


def x_bounds(x_lo: float, x_hi: float, x_end: float | None = None) -> tuple[float, float]:
    """A stable x range: from the first point (rounded down) to `x_end` (a stage's total steps)
    when the data lies within it, else to `x_hi` rounded up to half a power of ten."""
    if not (math.isfinite(x_lo) and math.isfinite(x_hi)):
        return 0.0, 1.0
    if x_end is not None and is_number(x_end) and math.isfinite(x_end) and x_lo <= x_hi <= x_end and x_end > x_lo:
        hi = float(x_end)
    else:
        magnitude = max(abs(x_hi), abs(x_lo), 1e-12)
        step = 10.0 ** math.floor(math.log10(magnitude)) / 2
        hi = math.ceil(x_hi / step) * step
        if hi <= x_hi and hi < PLOT_LIMIT:
            hi = x_hi + step
    if x_lo >= 0 and x_lo <= 0.1 * hi:
        lo = 0.0  # steps start at 0 or 1: show the axis from 0
    else:
        lo = x_lo
    if not hi > lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    return lo, hi


@dataclass(frozen=True)
class Frame:
    """Where data lands: data bounds and the canvas size in pixels (2 per cell across, 4 down)."""

    x0: float
    x1: float
    y0: float
    y1: float
    cols: int
    rows: int


def column_spans(xs: Sequence[float], ys: Sequence[float], frame: Frame, step: int = 1) -> tuple:
    """Per pixel column, the (top, bottom) pixel rows a line through the points covers, or None.

    `xs` must be in increasing order (as `finite_points` and a `SeriesHistory` give them). Points
    are binned per column (min, max, first, last: found by bisection and C-speed min/max, so a
    long series costs little more than a short one); empty columns between two binned ones are
    interpolated, and each column reaches the previous one's last row so the line has no holes.
    `step` > 1 keeps every step-th column (a dotted line, for a no-colour terminal).
    """
    cols, rows = frame.cols, frame.rows
    if cols < 1 or rows < 1 or not xs:
        return ()
    per_col = (frame.x1 - frame.x0) / (cols - 1) if cols > 1 else (frame.x1 - frame.x0) or 1.0
    sy = (rows - 1) / (frame.y1 - frame.y0)
    x0, y1 = frame.x0, frame.y1

    def row(y: float) -> int:
        r = int((y1 - y) * sy + 0.5)
        return 0 if r < 0 else rows - 1 if r >= rows else r

    # Column c holds the points with x in [x0 + (c - 1/2) per_col, x0 + (c + 1/2) per_col).
    bounds = [bisect_left(xs, x0 + (c - 0.5) * per_col) for c in range(cols + 1)]
    spans: list = [None] * cols
    previous: int | None = None
    prev_row = 0
    for c in range(cols):
        a, b = bounds[c], bounds[c + 1]
        if a >= b:
            continue
        segment = ys[a:b]
        first, last = row(ys[a]), row(ys[b - 1])
        top, bottom = row(max(segment)), row(min(segment))
        if previous is not None and c - previous > 1:  # straight line across the empty columns
            gap = c - previous
            row_before = prev_row
            for k in range(1, gap):
                r = int(prev_row + (first - prev_row) * k / gap + 0.5)
                spans[previous + k] = (min(r, row_before), max(r, row_before))
                row_before = r
            prev_row = row_before
        if previous is not None:
            top, bottom = min(top, prev_row), max(bottom, prev_row)
        spans[c] = (min(top, first), max(bottom, first))
        previous, prev_row = c, last
    if step > 1:
        spans = [s if i % step == 0 else None for i, s in enumerate(spans)]
    return tuple(spans)


@dataclass(frozen=True)
class Picture:
    """Everything a chart shows: compare two to know whether a redraw would change anything."""

    width: int
    height: int
    title: str
    legend: tuple[str, ...]
    frame: Frame | None
    label_width: int
    y_ticks: tuple[float, ...]
    x_ticks: tuple[float, ...]
    spans: tuple[tuple, ...]
    xlabel: str
    dotted: bool = False  # series after the first are drawn dotted (no colour to tell them apart)


def picture(title: str, series: Sequence[Series], width: int, height: int, *, xlabel: str = "",
            x_end: float | None = None, dotted_after_first: bool = False,
            previous: Picture | None = None) -> tuple[Picture, int]:
    """The picture of `series` on a `width` x `height` cells chart, and how many points it drew.

    Title on the first row (the caller puts the last value in it), then the canvas with y
    labels, the x axis and its labels. With `previous` (the picture on screen), its y range is
    kept while the data fits in it and fills at least `KEEP_FILL` of it, so the y axis does not
    move with every new minimum.
    """
    cleaned = [(s.label, s.xs, s.ys) if s.clean else (s.label, *finite_points(s.xs, s.ys)) for s in series]
    cleaned = [c for c in cleaned if c[1]]
    legend = tuple(label for label, _, _ in cleaned) if len(cleaned) > 1 else ()
    canvas_h = height - 3
    if not cleaned or canvas_h < 1 or width < 12:
        return Picture(width, height, title, legend, None, 0, (), (), (), xlabel, dotted_after_first), 0
    x_lo = min(c[1][0] for c in cleaned)
    x_hi = max(c[1][-1] for c in cleaned)
    y_lo = min(min(c[2]) for c in cleaned)
    y_hi = max(max(c[2]) for c in cleaned)
    x0, x1 = x_bounds(x_lo, x_hi, x_end)
    y_count = max(1, min(6, canvas_h // 2))
    kept = previous.frame if previous is not None and previous.height == height else None
    if kept is not None and kept.y0 <= y_lo and y_hi <= kept.y1 and \
            (y_hi - y_lo) >= KEEP_FILL * (kept.y1 - kept.y0):
        y0, y1, y_ticks = kept.y0, kept.y1, previous.y_ticks
    else:
        lo, hi = y_lo, y_hi
        if kept is not None:  # growing past the kept range: leave room to grow further
            span = y_hi - y_lo
            lo = y_lo - HEADROOM * span if y_lo < kept.y0 else y_lo
            hi = y_hi + HEADROOM * span if y_hi > kept.y1 else y_hi
            lo, hi = max(lo, -PLOT_LIMIT), min(hi, PLOT_LIMIT)
        y0, y1 = nice_bounds(lo, hi, y_count)
        y_ticks = tuple(nice_ticks(y0, y1, y_count))
    label_width = min(9, max((len(fmt_tick(t)) for t in y_ticks), default=1))
    canvas_w = width - label_width - 1
    if canvas_w < 4:
        return Picture(width, height, title, legend, None, 0, (), (), (), xlabel, dotted_after_first), 0
    frame = Frame(x0, x1, y0, y1, 2 * canvas_w, 4 * canvas_h)
    x_ticks = tuple(nice_ticks(x0, x1, max(2, canvas_w // 14)))
    spans = []
    drawn = 0
    for i, (_, xs, ys) in enumerate(cleaned):
        s = column_spans(xs, ys, frame, step=2 if dotted_after_first and i else 1)
        spans.append(s)
        drawn += min(len(xs), sum(1 for span in s if span is not None))
    return Picture(width, height, title, legend, frame, label_width, y_ticks, x_ticks, tuple(spans), xlabel,
                   dotted_after_first), drawn


def render(pic: Picture) -> ChartLines:
    """The rows of a picture: runs of (text, style)."""
    width, height = pic.width, pic.height
    lines: ChartLines = [_title_row(pic)]
    frame = pic.frame
    if frame is None:
        for _ in range(1, height):
            lines.append([(" " * width, None)])
        return lines[:height]
    canvas_h = height - 3
    canvas_w = width - pic.label_width - 1
    cells = _draw(pic.spans, canvas_w, canvas_h)
    tick_rows: dict[int, float] = {}
    for t in pic.y_ticks:
        row = int((frame.y1 - t) / (frame.y1 - frame.y0) * (canvas_h - 1) + 0.5) if canvas_h > 1 else 0
        tick_rows.setdefault(min(max(row, 0), canvas_h - 1), t)
    for row in range(canvas_h):
        runs: list[Run] = []
        if row in tick_rows:
            runs.append((fmt_tick(tick_rows[row])[: pic.label_width].rjust(pic.label_width) + "┤", "axis"))
        else:
            runs.append((" " * pic.label_width + "│", "axis"))
        runs.extend(_cell_runs(cells[row]))
        lines.append(runs)
    axis = ["─"] * canvas_w
    labels = [" "] * canvas_w
    taken = -2  # the last column holding a label
    for t in pic.x_ticks:
        col = int((t - frame.x0) / (frame.x1 - frame.x0) * (canvas_w - 1) + 0.5)
        if not 0 <= col < canvas_w:
            continue
        axis[col] = "┬"
        text = fmt_tick(t)
        start = min(max(0, col - len(text) // 2), canvas_w - len(text))
        if start > taken + 1 and start >= 0:
            labels[start:start + len(text)] = list(text)
            taken = start + len(text) - 1
    if pic.xlabel and len(pic.xlabel) + 1 < canvas_w - taken - 1:
        labels[canvas_w - len(pic.xlabel):] = list(pic.xlabel)
    lines.append([(" " * pic.label_width + "└" + "".join(axis), "axis")])
    lines.append([(" " * (pic.label_width + 1) + "".join(labels), "label")])
    return lines


def changed_span(old: list[Run], new: list[Run]) -> tuple[int, int] | None:
    """The cells [start, end) where two rows differ (text or style), None when their lengths
    differ; (0, 0) when they are the same. A terminal update can then skip the rest."""
    a = [(ch, style) for text, style in old for ch in text]
    b = [(ch, style) for text, style in new for ch in text]
    if len(a) != len(b):
        return None
    n = len(a)
    start = 0
    while start < n and a[start] == b[start]:
        start += 1
    if start == n:
        return 0, 0
    end = n
    while end > start and a[end - 1] == b[end - 1]:
        end -= 1
    return start, end


def _title_row(pic: Picture) -> list[Run]:
    title = pic.title[: pic.width]
    runs: list[Run] = [(title, "title")]
    used = len(title)
    if pic.legend:
        legend: list[Run] = []
        size = 0
        for i, label in enumerate(pic.legend):
            item = f"  {'┅' if pic.dotted and i else '━'} {label[:20]}"
            legend.append((item, f"s{i % 4}"))
            size += len(item)
        if used + size <= pic.width:
            runs.append((" " * (pic.width - used - size), None))
            runs.extend(legend)
            used = pic.width
    if used < pic.width:
        runs.append((" " * (pic.width - used), None))
    return runs


def _draw(spans: Sequence[Sequence], width: int, height: int) -> list[list[tuple[int, int]]]:
    """Cells as (dot bits, series index + 1; 0 when empty); a later series draws on top."""
    bits = [[0] * width for _ in range(height)]
    owner = [[0] * width for _ in range(height)]
    for index, column_spans_ in enumerate(spans, start=1):
        for px, span in enumerate(column_spans_):
            if span is None:
                continue
            cell_x, sub_x = divmod(px, 2)
            if cell_x >= width:
                break
            column_bits = DOT_BITS[sub_x]
            top, bottom = span
            for py in range(top, bottom + 1):
                cell_y, sub_y = divmod(py, 4)
                if cell_y >= height:
                    break
                bits[cell_y][cell_x] |= column_bits[sub_y]
                owner[cell_y][cell_x] = index
    return [list(zip(bits[r], owner[r])) for r in range(height)]


def _cell_runs(row: list[tuple[int, int]]) -> list[Run]:
    """Runs of one canvas row; blank cells join the run before them (fewer style changes)."""
    runs: list[Run] = []
    chars: list[str] = []
    style: str | None = None
    for bits, owner in row:
        if not bits:
            chars.append(" ")
            continue
        cell_style = f"s{(owner - 1) % 4}"
        if cell_style != style:
            if style is not None:
                runs.append(("".join(chars), style))
                chars = []
            style = cell_style  # leading blanks join the first coloured run
        chars.append(chr(BRAILLE + bits))
    if chars:
        runs.append(("".join(chars), style))
    return runs
