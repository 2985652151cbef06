"""Pure formatting helpers for the dashboard (numbers, durations, ages, state badges, text).

Every function takes anything a run file can hold (wrong types, huge or non-finite numbers,
megabytes of text, control characters) and returns a short printable string: the viewers
never die from the data they show. Numbers, durations, ages and cut text are formatted by
`dswb.util.fmt` (shared with the CLI); the dashboard-only helpers (badges, bars, axis ticks)
live here. Standard library only.
"""

from __future__ import annotations

import math

from dswb.util.fmt import cut_text, finite_or_none

STATE_STYLES = {
    "running": "bold green", "starting": "green", "paused": "bold yellow", "finished": "bold cyan",
    "failed": "bold red", "stopped": "yellow", "lost": "bold magenta", "unknown": "dim",
}
STATE_ICONS = {
    "running": "▶", "starting": "…", "paused": "⏸", "finished": "✔", "failed": "✘",
    "stopped": "■", "lost": "?", "unknown": "·",
}


def fmt_pct(value: object, digits: int = 1) -> str:
    value = finite_or_none(value)
    if value is None:
        return "N/A"
    return f"{value:.{digits}f}%"


def state_badge(state: object) -> tuple[str, str]:
    """(text, rich style) for a run state, e.g. ("✔ finished", "bold cyan")."""
    state = cut_text(state, 20, one_line=True) if state is not None else "unknown"
    return f"{STATE_ICONS.get(state, '·')} {state}", STATE_STYLES.get(state, "")


def bar(fraction: object, width: int) -> str:
    """A horizontal bar of `width` cells filled to `fraction` (eighth-block resolution)."""
    fraction = finite_or_none(fraction) or 0.0
    fraction = min(1.0, max(0.0, fraction))
    eighths = int(round(fraction * width * 8))
    full, rest = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[rest] if rest else ""
    return ("█" * full + partial).ljust(width)


MAX_TICKS = 12


def nice_step(span: float, count: int) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about `count` intervals over `span`."""
    raw = span / max(1, count)
    if not (raw > 0 and math.isfinite(raw)):
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 5):
        if m * power >= raw * (1 - 1e-12):
            return m * power
    return 10 * power


def nice_ticks(lo: float, hi: float, count: int) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or count < 1 or hi < lo:
        return []
    if hi == lo:
        return [lo]
    step = nice_step(hi - lo, count)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    for i in range(MAX_TICKS + 1):  # a fixed bound: never loops on a step below the values' precision
        value = (first + i) * step
        if value > hi + step * 1e-9:
            break
        ticks.append(0.0 if abs(value) < step * 1e-9 else round(value, 12) if abs(value) < 1e12 else value)
    return ticks


def fmt_tick(value: float) -> str:
    """Compact axis label: 250, 1.5k, 12k, 1M, 0.002, 3e-05, 1e+300."""
    magnitude = abs(value)
    if magnitude >= 1e12:
        return f"{value:.2g}"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= size:
            return f"{value / size:.3g}{suffix}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"
