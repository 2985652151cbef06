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

from dswb.tui.format import bar
from dswb.util.fmt import cut_text, finite_or_none, fmt_num

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


def render_batching(batching: object, summaries: object) -> Group | str:
    batching = batching if isinstance(batching, dict) else None
    summaries = summaries if isinstance(summaries, dict) else {}
    parts: list = []
    eff = _summary(summaries, "pad_efficiency")
    if eff and eff.get("last") is not None:
        line = Text()
        line.append("padding efficiency ", style="bold")
        line.append(f"{_pct(eff.get('last'))} ", style="bold green")
        line.append(f"(mean {_pct(eff.get('mean'))}, min {_pct(eff.get('min'))})  ", style="dim")
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
        s = _summary(summaries, key)
        if s:
            table.add_row(label, fmt_num(s.get("last")), fmt_num(s.get("mean")))
            shown = True
    if shown:
        parts.append(table)
    if batching:
        metrics = batching.get("metrics") if isinstance(batching.get("metrics"), dict) else {}
        facts = "  ".join(f"{cut_text(k, 100, one_line=True).replace('_', ' ')} {fmt_num(v)}"
                          for k, v in list(metrics.items())[:32])
        if facts:
            parts.append(Text(f"training set: {facts}", style="dim"))
        hist = histogram_lines(batching.get("hist") or {})
        if hist:
            parts.append(Text("sequence lengths", style="bold"))
            parts.extend(hist)
    return Group(*parts) if parts else "no batching information yet"


def _summary(summaries: dict, key: str) -> dict | None:
    s = summaries.get(key)
    return s if isinstance(s, dict) else None


def _pct(fraction: object) -> str:
    value = finite_or_none(fraction)
    return "N/A" if value is None else f"{100 * value:.1f}%"


def histogram_lines(hist: object, width: int = HIST_BAR) -> list[Text]:
    """One line per bin: `  96-112 ██████▋ 1,400`."""
    if not isinstance(hist, dict):
        return []
    edges, counts = hist.get("edges"), hist.get("counts")
    if not isinstance(edges, list) or not isinstance(counts, list) or not counts or len(edges) < len(counts) + 1:
        return []
    edges = [finite_or_none(e) for e in edges[: len(counts) + 1]]
    counts = [finite_or_none(c) for c in counts[:256]]
    if any(e is None for e in edges) or any(c is None or c < 0 for c in counts):
        return []
    top = max(counts) or 1
    labels = [f"{edges[i]:g}-{edges[i + 1]:g}"[:24] for i in range(len(counts))]
    label_width = max(len(label) for label in labels)
    lines = []
    for label, count in zip(labels, counts):
        text = Text()
        text.append(label.rjust(label_width) + " ", style="dim")
        text.append(bar(count / top, width), style="cyan")
        text.append(f" {fmt_num(int(count) if count < 1e15 else count)}")
        lines.append(text)
    return lines
