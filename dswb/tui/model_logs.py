"""A run's logs and alerts as the dashboard keeps them: bounded tails of `log` and `alert`
events (an alert is also a log line), and of raw lines read from `train.log` or from the
`process.out` of a detached launch, each with its level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dswb.tui.sanitize import LOG_LIMIT, clean_alert, name_text, text_value, time_value

if TYPE_CHECKING:
    from dswb.tui.model import RunModel

LOG_TAIL = 500
ALERT_TAIL = 200


def log_level(line: str) -> str:
    """The level word of a `train.log` line (`2025-01-01 12:00:00 WARNING ...`), else info."""
    head = line[:40].upper()
    for level in ("ERROR", "WARNING", "DEBUG"):
        if level in head:
            return level.lower()
    return "info"


def on_log(model: RunModel, event: dict) -> None:
    level = event.get("level")
    stage = event.get("stage")
    model.logs_total += 1
    model.logs.append({"t": time_value(event.get("t")),
                       "level": name_text(level, 10).lower() if level.__class__ is str and level else "info",
                       "stage": name_text(stage) if stage.__class__ is str and stage else None,
                       "message": text_value(event.get("message", ""), LOG_LIMIT)})


def on_alert(model: RunModel, event: dict) -> None:
    alert = clean_alert(event)
    model.alerts.append(alert)
    model.logs_total += 1
    model.logs.append({"t": alert["t"], "level": alert["level"], "stage": alert["stage"],
                       "message": f"ALERT {alert['code']}: {alert['message']}"})


def append_log_lines(model: RunModel, lines: list[str], source: str) -> None:
    """Keep the last lines of `train.log` (source "train.log") or else of `process.out`."""
    tail = model.log_lines if source == "train.log" else model.out_lines
    for line in lines[-LOG_TAIL:]:
        text = text_value(line, LOG_LIMIT)
        tail.append({"level": log_level(text), "message": text, "raw": True})
    if source == "train.log":
        model.log_lines_total += len(lines)
    else:
        model.out_lines_total += len(lines)
