"""Filling a DataTable with fixed column widths computed from its contents.

Auto-width columns can render with stale widths when a table is cleared and refilled before
Textual measures the new rows; explicit widths avoid that and make the layout deterministic.
"""

from __future__ import annotations

from typing import Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import DataTable


def _width(cell: object) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(str(cell))


def fill_table(table: DataTable, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[object]],
               keys: Sequence[str] | None = None) -> None:
    """Replace every column and row of `table`; `columns` are (key, label) pairs."""
    widths = [max([_width(label)] + [_width(row[i]) for row in rows]) for i, (_, label) in enumerate(columns)]
    table.clear(columns=True)
    for (key, label), width in zip(columns, widths):
        table.add_column(label, key=key, width=width)
    for i, row in enumerate(rows):
        table.add_row(*row, key=keys[i] if keys else None)
