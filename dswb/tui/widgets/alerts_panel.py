"""The run's alerts, newest first, each with the engine's explanation of what to do."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

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
        level = str(alert.get("level") or "warning")
        icon, style = ICONS.get(level, ("•", "bold"))
        head = Text()
        head.append(f"{icon} {level} ", style=style)
        head.append(str(alert.get("code") or "alert"), style="bold")
        where = f"  step {alert.get('step', '?')}"
        if alert.get("stage"):
            where += f" [{alert['stage']}]"
        head.append(where, style="dim")
        parts.append(head)
        parts.append(Text(f"  {alert.get('message', '')}"))
        if explain and alert.get("explain"):
            parts.append(Text(f"  why: {alert['explain']}", style="italic"))
    if total > len(alerts):
        parts.append(Text(f"… {total - len(alerts)} older", style="dim"))
    return Group(*parts)
