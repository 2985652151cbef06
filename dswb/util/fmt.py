"""Pure formatting: numbers, durations, times, byte sizes and text as short printable strings.

One formatter per kind of value, shared by the CLI, the dashboard, the run directory and the
engine's reports. Where a compact terminal line and a dashboard cell want different shapes, the
function takes a parameter (`fmt_num(compact=...)`, `fmt_duration(clock=...)`) instead of there
being two copies. Every function takes anything a run file can hold (None, bools, strings, NaN
and Inf, integers beyond float range, megabytes of text, control characters) and returns a short
printable string; none raises. Byte sizes use binary units (KiB, MiB, GiB, TiB).

Standard library only.
"""

from __future__ import annotations

import math
import re
import time
from typing import Callable

FLOAT_LIMIT = 1e300  # ints beyond this are not shown as numbers (float() would overflow near 1e308)
DURATION_LIMIT = 1e5 * 86400  # durations from here on show as `>99999d`
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
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
    """`value` as a finite float, else None (bools, strings, NaN, Inf and giant ints included)."""
    if not is_number(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
    as `… [cut, 1.9 MiB]` (the size of the whole text in UTF-8). Control characters become
    U+FFFD; with `one_line`, line breaks become `⏎` and tabs a space."""
    text = as_text(value)
    marker = ""
    if len(text) > limit:
        size = len(text.encode("utf-8", "replace")) if len(text) < 64 << 20 else len(text)
        marker = f"… [cut, {fmt_bytes(size)}]"
        text = text[:limit]
    if one_line:
        text = _LINE_BREAKS.sub("⏎", text).replace("\t", " ")
        text = _UNSAFE_LINE.sub("\ufffd", text)
    else:
        text = _UNSAFE.sub("\ufffd", text)
    return text + marker


def _cell_text(value: object) -> str:
    return cut_text(value, 24, one_line=True)


def fmt_num(value: object, digits: int = 4, *, compact: bool = False, missing: str = "-",
            text: Callable[[object], str] = _cell_text) -> str:
    """A short number with `digits` significant digits.

    Default (dashboard cells): integers exact with thousands separators below 10^12 (`13,480`),
    other values from 1,000 up to 10^9 rounded to an integer (`13,480`), exponents beyond 10^9 or
    below 0.001 (`3.000e-05`), else `1.235`.
    `compact=True` (CLI lines and tables): integers below 10,000 as they are (`42`), k/M/G from
    10,000 up to 10^12 (`12.3k`, `2.5M`), exponents beyond 10^12 or below 0.001 (`3.00e-04`), else
    `2.346`; suffixed and exponent forms carry one significant digit less.
    Either way: `missing` for None, `nan`/`inf`/`-inf`, `huge`/`-huge` for integers beyond float
    range, and `text(value)` for anything that is not a number (a bool, a string, a list).
    """
    if value is None:
        return missing
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return text(value)
    if isinstance(value, int) and not -FLOAT_LIMIT < value < FLOAT_LIMIT:
        return "huge" if value > 0 else "-huge"
    v = float(value)
    if not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    a = abs(v)
    if compact:
        if isinstance(value, int) and a < 10_000:
            return str(value)
        if 10_000 <= a < 1e12:
            for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
                if a >= scale:
                    return f"{v / scale:.{max(1, digits - 1)}g}{suffix}"
        if a == 0:
            return "0"
        if a >= 1e12 or a < 1e-3:
            return f"{v:.{max(1, digits - 2)}e}"
        return f"{v:.{digits}g}"
    if isinstance(value, int) and a < 1e12:
        return f"{value:,}"
    if 1000 <= a < 1e9:
        return f"{value:,.0f}"
    if a == 0:
        return "0"
    if a >= 1e9 or a < 1e-3:
        return f"{v:.{max(1, digits - 1)}e}"
    return f"{value:.{digits}g}"


def fmt_duration(seconds: object, *, clock: bool = False, missing: str | None = None) -> str:
    """A duration in seconds.

    Default: `42s`, `3m05s`, `1h02m`, `1d01h`. `clock=True` (progress bars): `03:05`, `1:02:05`.
    `>99999d` from 10^5 days on; `missing` (default `-`, or `--:--` with `clock`) when the value is
    unknown: None, negative, NaN, Inf, not a number.
    """
    seconds = finite_or_none(seconds)
    if seconds is None or seconds < 0:
        return missing if missing is not None else ("--:--" if clock else "-")
    if seconds >= DURATION_LIMIT:
        return ">99999d"
    s = int(round(seconds))
    if clock:
        h, rem = divmod(s, 3600)
        m, s = divmod(rem, 60)
        return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def fmt_age(then: object, now: float | None = None) -> str:
    """How long ago the unix time `then` was (`12s ago`, `3m05s ago`), `now` defaulting to the
    current time; `-` when `then` is not a finite number."""
    then = finite_or_none(then)
    if then is None:
        return "-"
    return f"{fmt_duration(max(0.0, (time.time() if now is None else now) - then))} ago"


def fmt_time(t: object) -> str:
    """A unix time as local `YYYY-MM-DD HH:MM:SS`; `-` when it is not a representable time."""
    t = finite_or_none(t)
    if t is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError):
        return "-"


def fmt_bytes(n: object, missing: str = "?") -> str:
    """A size in binary units: `512 B`, `4.0 KiB`, `1.9 MiB`, `74.5 GiB`, `1.2 TiB` (TiB beyond);
    `missing` when `n` is None or not a finite number."""
    value = finite_or_none(n)
    if value is None:
        return missing
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in BYTE_UNITS[1:]:
        value /= 1024
        if abs(value) < 1024 or unit == BYTE_UNITS[-1]:
            break
    return f"{value:.1f} {unit}"
