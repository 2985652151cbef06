"""A fast ANSI (SGR) -> `rich.text.Text` converter for plotext's output.

plotext writes every cell run as `ESC[..m ESC[..m text ESC[0m`; rich's general `Text.from_ansi`
spends about a third of a plot's redraw decoding that. Here a regex split plus a cache of the
styles of each code combination does the same job several times faster.
"""

from __future__ import annotations

import re

from rich.style import Style
from rich.text import Text

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
