"""The stage's progress bar with the run's own ETA (from `status.json`, not a local clock).

One line of text (bar, percentage, step, ETA, tokens/s, last write), rebuilt only when one of
its parts changed: a live run updates it once per refresh, at the cost of one short line.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from dswb.tui.format import bar
from dswb.util.fmt import fmt_duration, fmt_num

BAR_WIDTH = 30
ENDED = ("finished", "failed", "stopped", "lost")


class RunProgress(Static):
    """`━━━━━━━━━━━━━━━━━╸            50%  150/300  ETA 1m15s  13,228 tok/s  3s ago`."""

    DEFAULT_CSS = """
    RunProgress { height: 1; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self._shown: tuple | None = None

    def show(self, step: int, total: int, eta_s: float | None, tokens_per_s: float | None,
             state: str, updated: str = "") -> None:
        key = (step, total, fmt_duration(eta_s), fmt_num(tokens_per_s), state, updated)
        if key == self._shown:
            return
        self._shown = key
        self.update(render_progress(step, total, eta_s, tokens_per_s, state, updated), layout=False)


def render_progress(step: object, total: object, eta_s: object, tokens_per_s: object, state: str,
                    updated: str = "") -> Text:
    step = step if step.__class__ is int else 0
    total = total if total.__class__ is int and total > 0 else 0
    if total:
        fraction = min(step, total) / total
    else:
        fraction = 1.0 if state == "finished" else 0.0
    text = Text(no_wrap=True, overflow="ellipsis")
    filled = bar(fraction, BAR_WIDTH)
    text.append(filled.rstrip(), style="bold green" if fraction >= 1 else "bold blue")
    text.append("─" * (BAR_WIDTH - len(filled.rstrip())), style="dim")
    text.append(f" {100 * fraction:3.0f}%  ")
    parts = [f"{fmt_num(step)}/{fmt_num(total)}" if total else f"step {fmt_num(step)}"]
    ended = state in ENDED
    if eta_s is not None and not ended:
        parts.append(f"ETA {fmt_duration(eta_s)}")
    if ended:
        parts.append(state)
    elif tokens_per_s is not None:
        parts.append(f"{fmt_num(tokens_per_s)} tok/s")
    if updated:
        parts.append(updated)
    text.append("  ".join(parts))
    return text
