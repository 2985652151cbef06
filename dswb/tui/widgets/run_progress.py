"""The stage's progress bar with the run's own ETA (from `status.json`, not a local clock)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

from dswb.tui.format import fmt_duration, fmt_num


class RunProgress(Horizontal):
    """`[━━━━━━━╸─────] 50%  150/300  ETA 1m15s  13,228 tok/s`."""

    DEFAULT_CSS = """
    RunProgress { height: 1; }
    RunProgress ProgressBar { width: auto; }
    RunProgress Bar { width: 24; }
    RunProgress #progress-text { width: 1fr; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield ProgressBar(total=None, show_eta=False, show_percentage=True, id="bar")
        yield Label("", id="progress-text")

    def show(self, step: int, total: int, eta_s: float | None, tokens_per_s: float | None,
             state: str, updated: str = "") -> None:
        bar = self.query_one(ProgressBar)
        if total > 0:
            bar.update(total=total, progress=min(step, total))
        elif state in ("finished",):
            bar.update(total=1, progress=1)
        else:
            bar.update(total=100, progress=0)  # unknown length: an empty bar, not an animation
        parts = [f"{step:,}/{total:,}" if total else f"step {step:,}"]
        ended = state in ("finished", "failed", "stopped", "lost")
        if eta_s is not None and not ended:
            parts.append(f"ETA {fmt_duration(eta_s)}")
        if ended:
            parts.append(state)
        elif tokens_per_s is not None:
            parts.append(f"{fmt_num(tokens_per_s)} tok/s")
        if updated:
            parts.append(updated)
        self.query_one("#progress-text", Label).update("  ".join(parts))
