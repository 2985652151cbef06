"""Fast ANSI (SGR) decoding of plotext's output, to rich `Text` or straight to Textual strips.

plotext writes every cell run as `ESC[..m ESC[..m text ESC[0m`; rich's general `Text.from_ansi`
plus Textual's conversion of that Text to strips cost more than building the plot. Here a regex
split and a cache of the style of each code combination do the same job several times faster;
`ansi_to_strips` gives the plot widget its lines directly (Textual's Line API).
"""

from __future__ import annotations

import re

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip

_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_STYLES: dict[tuple[str, ...], Style | None] = {}


def _style(codes: tuple[str, ...]) -> Style | None:
    style = _STYLES.get(codes)
    if style is None and codes not in _STYLES:
        decoded = Text.from_ansi("".join(f"\x1b[{c}m" for c in codes) + "x")
        style = decoded.get_style_at_offset(_NULL_CONSOLE, 0) if decoded.spans else None
        if style is not None and not style:
            style = None
        _STYLES[codes] = style
    return style


class _NullConsole:
    """`Text.get_style_at_offset` wants a console only to look up named styles (none here)."""

    def get_style(self, name, default=None):
        return Style.parse(name) if isinstance(name, str) else name


_NULL_CONSOLE = _NullConsole()


def ansi_to_text(ansi: str) -> Text:
    """Like `Text.from_ansi(ansi)` for SGR-only input (colours and attributes, no cursor moves)."""
    text = Text(end="", no_wrap=True, overflow="ignore")
    append = text.append
    parts = _SGR.split(ansi)
    active: tuple[str, ...] = ()
    body = parts[0]
    if body:
        append(body)
    for i in range(1, len(parts), 2):
        code = parts[i]
        active = () if code in ("0", "") else active + (code,)
        body = parts[i + 1]
        if body:
            append(body, _style(active) if active else None)
    return text


def ansi_to_strips(ansi: str, width: int, height: int) -> list[Strip]:
    """One `Strip` of exactly `width` cells per line (at most `height` lines)."""
    strips = []
    active: tuple[str, ...] = ()
    for line in ansi.split("\n")[:height]:
        parts = _SGR.split(line)
        segments = []
        if parts[0]:
            segments.append(Segment(parts[0], _style(active) if active else None))
        for i in range(1, len(parts), 2):
            code = parts[i]
            active = () if code in ("0", "") else active + (code,)
            body = parts[i + 1]
            if body:
                segments.append(Segment(body, _style(active) if active else None))
        strips.append(Strip(segments).adjust_cell_length(width))
    while len(strips) < height:
        strips.append(Strip.blank(width))
    return strips
