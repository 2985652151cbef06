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


_CELL_STYLES: dict[tuple, Style | None] = {}


def matrix_to_strips(matrix, width: int, height: int) -> list[Strip]:
    """Strips straight from a built plotext matrix (its marker and colour grids), skipping the
    ANSI string plotext would make of them. `matrix` is `figure.monitor.matrix` after
    `figure._build_matrix()`; rows are stored bottom-up."""
    markers, fgs, styles, bgs = matrix.marker, matrix.fullground, matrix.style, matrix.background
    strips = []
    for row in range(len(markers) - 1, -1, -1):
        marker_row, fg_row, style_row, bg_row = markers[row], fgs[row], styles[row], bgs[row]
        segments = []
        run: list[str] = []
        key = None
        for col in range(len(marker_row)):
            cell_key = (fg_row[col], style_row[col], bg_row[col])
            if cell_key != key:
                if run:
                    segments.append(Segment("".join(run), _cell_style(key)))
                run = []
                key = cell_key
            run.append(marker_row[col])
        if run:
            segments.append(Segment("".join(run), _cell_style(key)))
        if len(marker_row) == width:  # one cell per marker: the length is known, no second strip
            strips.append(Strip(segments, width))
        else:
            strips.append(Strip(segments).adjust_cell_length(width))
        if len(strips) == height:
            break
    while len(strips) < height:
        strips.append(Strip.blank(width))
    return strips


def _cell_style(key: tuple) -> Style | None:
    style = _CELL_STYLES.get(key)
    if style is None and key not in _CELL_STYLES:
        from plotext._utility import colors_to_ansi

        codes = tuple(c for c in _SGR.findall(colors_to_ansi(*key)))
        style = _CELL_STYLES[key] = _style(codes) if codes else None
    return style
