"""Filling a DataTable with fixed column widths computed from its contents.

Auto-width columns can render with stale widths when a table is cleared and refilled before
Textual measures the new rows; explicit widths avoid that and make the layout deterministic.
When only values change (same rows, nothing wider than before), cells are updated in place,
which is much cheaper than rebuilding the table on every live update.
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
    """Show `rows` under `columns` ((key, label) pairs); `keys` name the rows."""
    widths = [max([_width(label)] + [_width(row[i]) for row in rows]) for i, (_, label) in enumerate(columns)]
    keys = list(keys) if keys is not None else [str(i) for i in range(len(rows))]
    layout = getattr(table, "_dswb_layout", None)
    column_keys = [key for key, _ in columns]
    if layout is not None and layout[0] == column_keys and layout[2] == keys and \
            all(new <= old for new, old in zip(widths, layout[1])):  # widths never shrink in place
        previous = getattr(table, "_dswb_rows", [])
        for row_key, row, old in zip(keys, rows, previous):
            for (column_key, _), value, old_value in zip(columns, row, old):
                if value != old_value:
                    table.update_cell(row_key, column_key, value)
        table._dswb_rows = [tuple(row) for row in rows]
        return
    table.clear(columns=True)
    for (key, label), width in zip(columns, widths):
        table.add_column(label, key=key, width=width)
    for key, row in zip(keys, rows):
        table.add_row(*row, key=key)
    table._dswb_layout = (column_keys, widths, keys)
    table._dswb_rows = [tuple(row) for row in rows]
