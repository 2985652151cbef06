"""A read-only table drawn line by line, for tables whose values change at every refresh.

Textual's `DataTable` renders every cell through rich and costs ~15 ms per repaint of a small
table; this one keeps each row as one prepared line (Textual's Line API) and, when values
change, repaints only the rows whose text changed. No cursor, no scrolling of its own (put it
in a scrolling container).
"""

from __future__ import annotations

from typing import Sequence

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.widget import Widget

HEADER = Style(bold=True)


class TextTable(Widget):
    """`show(rows, keys)` under fixed `columns` ((key, label) pairs); `right` names the
    columns aligned right."""

    DEFAULT_CSS = """
    TextTable { height: auto; }
    """

    def __init__(self, columns: Sequence[tuple[str, str]], *, right: Sequence[str] = (), id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.columns = list(columns)
        self.right = set(right)
        self.rows: dict[str, tuple[str, ...]] = {}
        self._lines: list[str] = [self._format([label for _, label in self.columns], self._widths([]))]
        self._strips: dict[int, Strip] = {}
        self.rows_repainted = 0

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def get_row(self, key: str) -> tuple[str, ...]:
        return self.rows[key]

    def _widths(self, rows: Sequence[Sequence[str]]) -> list[int]:
        return [max([cell_len(label)] + [cell_len(row[i]) for row in rows]) for i, (_, label) in
                enumerate(self.columns)]

    def _format(self, cells: Sequence[str], widths: Sequence[int]) -> str:
        parts = []
        for (key, _), cell, width in zip(self.columns, cells, widths):
            pad = " " * max(0, width - cell_len(cell))
            parts.append(pad + cell if key in self.right else cell + pad)
        return "  ".join(parts)

    def show(self, rows: Sequence[Sequence[str]], keys: Sequence[str]) -> None:
        rows = [tuple(str(c) for c in row) for row in rows]
        self.rows = dict(zip(keys, rows))
        widths = self._widths(rows)
        lines = [self._format([label for _, label in self.columns], widths)]
        lines += [self._format(row, widths) for row in rows]
        previous = self._lines
        if lines == previous:
            return
        self._lines = lines
        if len(lines) != len(previous):
            self._strips.clear()
            self.rows_repainted += len(lines)
            self.refresh(layout=True)
            return
        width = self.size.width
        for y, (old, new) in enumerate(zip(previous, lines)):
            if old != new:  # repaint from the first changed character on (ASCII rows: one cell each)
                self._strips.pop(y, None)
                self.rows_repainted += 1
                start = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
                if not (old.isascii() and new.isascii()):
                    start = 0
                self.refresh(Region(start, y, max(1, max(width, len(new)) - start), 1))

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return max(cell_len(line) for line in self._lines)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        strip = self._strips.get(y)
        if strip is None or strip.cell_length != width:
            base = self.rich_style
            if 0 <= y < len(self._lines):
                style = base + HEADER if y == 0 else base
                strip = Strip([Segment(self._lines[y], style)]).adjust_cell_length(width, base)
            else:
                strip = Strip.blank(width, base)
            self._strips[y] = strip
        return strip
