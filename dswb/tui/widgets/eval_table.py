"""Evaluation results per stage: the latest validation loss, perplexity and task accuracy, and the
lm-evaluation-harness numbers (`lm_eval/<task>/<metric>`, docs/lm-eval.md) in one more column when a
stage has any."""

from __future__ import annotations

from textual.widgets import DataTable

from dswb.tui.widgets._tables import fill_table
from dswb.util.fmt import cut_text, finite_or_none, fmt_num

COLUMNS = ("stage", "step", "val_loss", "val_ppl", "task_acc")
LM_EVAL = "lm_eval/"


def lm_eval_cell(metrics: dict) -> str:
    """`task/metric=value` for each lm-eval metric, or '' when there is none."""
    return "  ".join(f"{name[len(LM_EVAL):]}={fmt_num(value)}" for name, value in sorted(metrics.items())
                     if name.startswith(LM_EVAL))


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
        cells, extra = [], []
        for stage, step, metrics in rows:
            metrics = metrics if isinstance(metrics, dict) else {}
            acc = finite_or_none(metrics.get("task_acc"))
            cells.append((cut_text(stage, 100, one_line=True), fmt_num(step), fmt_num(metrics.get("val_loss")),
                          fmt_num(metrics.get("val_ppl")), f"{100 * acc:.1f}%" if acc is not None else "-"))
            extra.append(cut_text(lm_eval_cell(metrics), 400, one_line=True) or "-")
        columns = COLUMNS
        if any(e != "-" for e in extra):   # the column only when some stage has lm-eval numbers
            columns = COLUMNS + ("lm-eval",)
            cells = [c + (e,) for c, e in zip(cells, extra)]
        if (columns, cells) == self._shown:
            return
        self._shown = columns, cells
        fill_table(self, [(c, c) for c in columns], cells, [str(i) for i in range(len(cells))])
