"""Pure formatting helpers for the dashboard (numbers, durations, ages, state badges)."""

from __future__ import annotations

import math

STATE_STYLES = {
    "running": "bold green", "starting": "green", "paused": "bold yellow", "finished": "bold cyan",
    "failed": "bold red", "stopped": "yellow", "lost": "bold magenta", "unknown": "dim",
}
STATE_ICONS = {
    "running": "▶", "starting": "…", "paused": "⏸", "finished": "✔", "failed": "✘",
    "stopped": "■", "lost": "?", "unknown": "·",
}


def fmt_num(value: object, digits: int = 4) -> str:
    """A short number: 4 significant digits, thousands separators for large integers."""
    if value is None or isinstance(value, bool):
        return "-"
    if not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, int) and abs(value) < 1e12:
        return f"{value:,}"
    if 1000 <= abs(value) < 1e9:
        return f"{value:,.0f}"
    if value == 0:
        return "0"
    if abs(value) >= 1e9 or abs(value) < 1e-3:
        return f"{value:.{max(1, digits - 1)}e}"
    return f"{value:.{digits}g}"


def fmt_duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`; `-` when unknown."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def fmt_age(then: float | None, now: float) -> str:
    """How long ago `then` was: `12s ago`, `3m05s ago`."""
    if then is None:
        return "-"
    return f"{fmt_duration(max(0.0, now - then))} ago"


def fmt_pct(value: object, digits: int = 1) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "N/A"
    return f"{value:.{digits}f}%"


def state_badge(state: str) -> tuple[str, str]:
    """(text, rich style) for a run state, e.g. ("✔ finished", "bold cyan")."""
    return f"{STATE_ICONS.get(state, '·')} {state}", STATE_STYLES.get(state, "")


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of `width` cells filled to `fraction` (eighth-block resolution)."""
    fraction = min(1.0, max(0.0, fraction if math.isfinite(fraction) else 0.0))
    eighths = int(round(fraction * width * 8))
    full, rest = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[rest] if rest else ""
    return ("█" * full + partial).ljust(width)


def nice_ticks(lo: float, hi: float, count: int) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or count < 1:
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def fmt_tick(value: float) -> str:
    """Compact axis label: 250, 1.5k, 12k, 1M."""
    magnitude = abs(value)
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= size:
            return f"{value / size:.3g}{suffix}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"
