"""The last lines of the run's log (`train.log`, else its `log` and `alert` events), newest last."""

from __future__ import annotations

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

from dswb.util.fmt import cut_text

LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "info": "", "debug": "dim"}


class LogTail(RichLog):
    """Appends only lines it has not shown yet (the model keeps a bounded tail)."""

    DEFAULT_CSS = """
    LogTail { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, max_lines=1000, wrap=True, markup=False, highlight=False)
        self._seen = 0
        self._lines: list[dict] = []
        self._width = 0
        self._source = ""

    def show(self, lines: list[dict], total: int, source: str = "") -> None:
        """`lines`: the model's tail; `total`: how many were ever appended to it; a new `source`
        (train.log appearing after the events were shown) starts the view again."""
        if source != self._source:
            self._source = source
            self._seen = 0
            self.clear()
        self._lines = lines
        new = total - self._seen
        self._seen = total
        if new <= 0:
            return
        for entry in lines[-new:] if new < len(lines) else lines:
            self.write(format_line(entry))  # RichLog defers it until its size is known

    def on_resize(self, event: Resize) -> None:
        """Lines are wrapped when written: rewrite the tail when the width changes."""
        super().on_resize(event)
        width = event.size.width
        if width and self._width and width != self._width:
            self.clear()
            for entry in self._lines:
                self.write(format_line(entry))
        if width:
            self._width = width


def format_line(entry: dict) -> Text:
    entry = entry if isinstance(entry, dict) else {"message": entry}
    level = cut_text(entry.get("level") or "info", 10, one_line=True)
    message = cut_text(entry.get("message", ""), 1100)
    if entry.get("raw"):  # a train.log line, shown as written
        return Text(message, style=LEVEL_STYLES.get(level, ""))
    text = Text()
    stage = entry.get("stage")
    text.append(f"{level.upper():7s} ", style=LEVEL_STYLES.get(level, ""))
    if stage:
        text.append(f"[{cut_text(stage, 100, one_line=True)}] ", style="dim")
    text.append(message)
    return text
