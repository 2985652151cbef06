"""Pure formatting helpers for the dashboard (numbers, durations, ages, state badges, text).

Every function takes anything a run file can hold (wrong types, huge or non-finite numbers,
megabytes of text, control characters) and returns a short printable string: the viewers
never die from the data they show. Standard library only.
"""

from __future__ import annotations

import math
import re

STATE_STYLES = {
    "running": "bold green", "starting": "green", "paused": "bold yellow", "finished": "bold cyan",
    "failed": "bold red", "stopped": "yellow", "lost": "bold magenta", "unknown": "dim",
}
STATE_ICONS = {
    "running": "▶", "starting": "…", "paused": "⏸", "finished": "✔", "failed": "✘",
    "stopped": "■", "lost": "?", "unknown": "·",
}
FLOAT_LIMIT = 1e300  # ints beyond this are not shown as numbers (float() would overflow near 1e308)
# Control characters (a terminal would act on them), DEL, C1 controls and lone surrogates (not
# encodable as UTF-8): shown as U+FFFD. `_UNSAFE_LINE` also folds tabs and line breaks.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_UNSAFE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_LINE_BREAKS = re.compile("\r\n|[\n\r]")


def is_number(value: object) -> bool:
    """A real number that converts to float safely (not a bool, not a giant int)."""
    cls = value.__class__
    if cls is float:
        return True
    return cls is int and -FLOAT_LIMIT < value < FLOAT_LIMIT


def finite_or_none(value: object) -> float | None:
    """`value` as a finite float, else None."""
    if not is_number(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def human_bytes(n: float) -> str:
    """`2.0 MB`, `512 B`."""
    for size, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def as_text(value: object) -> str:
    """`str(value)`, even for values whose `str` fails (deeply nested lists)."""
    if value.__class__ is str:
        return value
    try:
        return str(value)
    except (RecursionError, ValueError, MemoryError):
        return f"<{type(value).__name__}>"


def cut_text(value: object, limit: int = 2000, *, one_line: bool = False) -> str:
    """Printable text of at most about `limit` characters; longer text ends with a marker such
    as `… [cut, 2.0 MB]`. Control characters become U+FFFD; with `one_line`, line breaks
    become `⏎` and tabs a space."""
    text = as_text(value)
    marker = ""
    if len(text) > limit:
        size = len(text.encode("utf-8", "replace")) if len(text) < 64 << 20 else len(text)
        marker = f"… [cut, {human_bytes(size)}]"
        text = text[:limit]
    if one_line:
        text = _LINE_BREAKS.sub("⏎", text).replace("\t", " ")
        text = _UNSAFE_LINE.sub("\ufffd", text)
    else:
        text = _UNSAFE.sub("\ufffd", text)
    return text + marker


def fmt_num(value: object, digits: int = 4) -> str:
    """A short number: 4 significant digits, thousands separators for large integers."""
    if value is None or isinstance(value, bool):
        return "-"
    if value.__class__ is int and abs(value) >= FLOAT_LIMIT:
        return "huge" if value > 0 else "-huge"
    if not isinstance(value, (int, float)):
        return cut_text(value, 24, one_line=True)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, int) and abs(value) < 1e12:
        return f"{value:,}"
    if 1000 <= abs(value) < 1e9:
        return f"{value:,.0f}"
    if value == 0:
        return "0"
    if abs(value) >= 1e9 or abs(value) < 1e-3:
        return f"{float(value):.{max(1, digits - 1)}e}"
    return f"{value:.{digits}g}"


def fmt_duration(seconds: object) -> str:
    """`1h02m`, `3m05s`, `42s`; `-` when unknown."""
    seconds = finite_or_none(seconds)
    if seconds is None or seconds < 0:
        return "-"
    if seconds >= 1e5 * 86400:
        return ">99999d"
    seconds = int(round(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def fmt_age(then: object, now: float) -> str:
    """How long ago `then` was: `12s ago`, `3m05s ago`."""
    then = finite_or_none(then)
    if then is None:
        return "-"
    return f"{fmt_duration(max(0.0, now - then))} ago"


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
