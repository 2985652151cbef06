"""Batching: padding efficiency, tokens per batch, and the sequence-length histogram.

Reads the stage's `batching` event (histogram of the training set's lengths, truncated and
rejected counts) and the per-step metrics `pad_efficiency`, `tokens_real`, `tokens_padded`,
`batch_size`.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from dswb.tui.format import bar, fmt_num

HIST_BAR = 40


class BatchingPanel(Static):
    """`show(batching_event, summaries)`; either part may be missing."""

    DEFAULT_CSS = """
    BatchingPanel { height: auto; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("no batching information yet", id=id, classes=classes)
        self._shown: tuple | None = None

    def show(self, batching: dict | None, summaries: dict[str, dict]) -> None:
        key = (repr(batching), repr({k: summaries.get(k) for k in WATCHED}))
        if key == self._shown:
            return
        self._shown = key
        self.update(render_batching(batching, summaries))


WATCHED = ("pad_efficiency", "tokens_real", "tokens_padded", "batch_size", "seq_len")


def render_batching(batching: dict | None, summaries: dict[str, dict]) -> Group | str:
    parts: list = []
    eff = summaries.get("pad_efficiency")
    if eff:
        line = Text()
        line.append("padding efficiency ", style="bold")
        line.append(f"{100 * eff['last']:.1f}% ", style="bold green")
        line.append(f"(mean {100 * eff['mean']:.1f}%, min {100 * eff['min']:.1f}%)  ", style="dim")
        line.append(bar(eff["last"], 20), style="green")
        parts.append(line)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(justify="right")
    table.add_row("per batch", "last", "mean")
    rows = (("real tokens", "tokens_real"), ("padded tokens", "tokens_padded"),
            ("samples", "batch_size"), ("sequence length", "seq_len"))
    shown = False
    for label, key in rows:
        s = summaries.get(key)
        if s:
            table.add_row(label, fmt_num(s["last"]), fmt_num(s["mean"]))
            shown = True
    if shown:
        parts.append(table)
    if batching:
        metrics = batching.get("metrics") or {}
        facts = "  ".join(f"{k.replace('_', ' ')} {fmt_num(v)}" for k, v in metrics.items())
        if facts:
            parts.append(Text(f"training set: {facts}", style="dim"))
        hist = histogram_lines(batching.get("hist") or {})
        if hist:
            parts.append(Text("sequence lengths", style="bold"))
            parts.extend(hist)
    return Group(*parts) if parts else "no batching information yet"


def histogram_lines(hist: dict, width: int = HIST_BAR) -> list[Text]:
    """One line per bin: `  96-112 ██████▋ 1,400`."""
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    if not counts or len(edges) < len(counts) + 1:
        return []
    top = max(counts) or 1
    label_width = max(len(f"{edges[i]:g}-{edges[i + 1]:g}") for i in range(len(counts)))
    lines = []
    for i, count in enumerate(counts):
        text = Text()
        text.append(f"{edges[i]:g}-{edges[i + 1]:g}".rjust(label_width) + " ", style="dim")
        text.append(bar(count / top, width), style="cyan")
        text.append(f" {count:,}")
        lines.append(text)
    return lines
