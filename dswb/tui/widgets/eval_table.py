"""Evaluation results per stage: the latest validation loss, perplexity and task accuracy."""

from __future__ import annotations

from textual.widgets import DataTable

from dswb.util.fmt import cut_text, finite_or_none, fmt_num
from dswb.tui.widgets._tables import fill_table

COLUMNS = ("stage", "step", "val_loss", "val_ppl", "task_acc")


class EvalTable(DataTable):
    """`show(rows)` with rows `(stage, step, {metric: value})`."""

    DEFAULT_CSS = """
    EvalTable { height: auto; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self._shown: object = None

    def on_mount(self) -> None:
        fill_table(self, [(c, c) for c in COLUMNS], [])

    def show(self, rows: list[tuple[str, int | None, dict]]) -> None:
        cells = []
        for stage, step, metrics in rows:
            metrics = metrics if isinstance(metrics, dict) else {}
            acc = finite_or_none(metrics.get("task_acc"))
            cells.append((cut_text(stage, 100, one_line=True), fmt_num(step), fmt_num(metrics.get("val_loss")),
                          fmt_num(metrics.get("val_ppl")), f"{100 * acc:.1f}%" if acc is not None else "-"))
        if cells == self._shown:
            return
        self._shown = cells
        fill_table(self, [(c, c) for c in COLUMNS], cells, [str(i) for i in range(len(cells))])
