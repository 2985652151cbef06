"""The run's alerts, newest first, each with the engine's explanation of what to do."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from dswb.util.fmt import cut_text, fmt_num

ICONS = {"error": ("✘", "bold red"), "warning": ("⚠", "bold yellow")}


class AlertsPanel(Static):
    """`show(alerts)` renders them; `limit` keeps only the newest few (side panel)."""

    DEFAULT_CSS = """
    AlertsPanel { height: auto; }
    """

    def __init__(self, *, limit: int | None = None, explain: bool = True, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__("no alerts", id=id, classes=classes)
        self.limit = limit
        self.explain = explain
        self._shown: list | None = None

    def show(self, alerts: list[dict]) -> None:
        newest = list(reversed(alerts))[: self.limit] if self.limit else list(reversed(alerts))
        if newest == self._shown:
            return
        self._shown = newest
        self.update(render_alerts(newest, len(alerts), self.explain))


def render_alerts(alerts: list[dict], total: int, explain: bool = True) -> Group | str:
    if not alerts:
        return "no alerts"
    parts = []
    for alert in alerts:
        alert = alert if isinstance(alert, dict) else {}
        level = cut_text(alert.get("level") or "warning", 10, one_line=True)
        icon, style = ICONS.get(level, ("•", "bold"))
        head = Text()
        head.append(f"{icon} {level} ", style=style)
        head.append(cut_text(alert.get("code") or "alert", 100, one_line=True), style="bold")
        step = alert.get("step")
        where = f"  step {fmt_num(step) if step is not None else '?'}"
        if alert.get("stage"):
            where += f" [{cut_text(alert['stage'], 100, one_line=True)}]"
        head.append(where, style="dim")
        parts.append(head)
        parts.append(Text(f"  {cut_text(alert.get('message') or '', 1100, one_line=True)}"))
        if explain and alert.get("explain"):
            parts.append(Text(f"  why: {cut_text(alert['explain'], 1100, one_line=True)}", style="italic"))
    if isinstance(total, int) and total > len(alerts):
        parts.append(Text(f"… {total - len(alerts)} older", style="dim"))
    return Group(*parts)
