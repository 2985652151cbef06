"""A reasoning run's RL stage at a glance: the latest format rate, accuracy and thinking length,
and per reward source its mean and the completions it could not score (a reward function that
fails leaves them out of the update), now and over the stage, highlighted when there are any."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from dswb.tui.format import fmt_pct
from dswb.tui.reasoning import reward_source_names
from dswb.tui.widgets.rl_facts import UNSCORABLE_STYLE, unscorable_now
from dswb.util.fmt import cut_text, finite_or_none, fmt_num

EMPTY = "no reasoning metrics yet"


def reasoning_lines(metrics: dict) -> list[tuple[str, str]]:
    """(label, value) of the latest reasoning metrics the stage reported."""
    lines = []
    share = finite_or_none(metrics.get("reasoning/format_rate"))
    if share is not None:
        lines.append(("format rate", fmt_pct(100 * share)))
    if "reasoning/accuracy" in metrics:
        lines.append(("accuracy", fmt_num(metrics.get("reasoning/accuracy"))))
    mean, most = metrics.get("reasoning/think_mean_tokens"), metrics.get("reasoning/think_max_tokens")
    if mean is not None or most is not None:
        lines.append(("thinking tokens", f"mean {fmt_num(mean)}  max {fmt_num(most)}"))
    return lines


def source_rows(metrics: dict, totals: dict) -> list[tuple[str, str, int, int]]:
    """(source, last mean, unscorable at the last iteration, unscorable over the stage) per
    reward source."""
    rows = []
    for source in reward_source_names(metrics):
        total = totals.get(source)
        rows.append((source, fmt_num(metrics.get(f"rewards/{source}/mean")), unscorable_now(metrics, source),
                     total if total.__class__ is int and total > 0 else 0))
    return rows


def render_reasoning(metrics: object, totals: object = None) -> Group | str:
    metrics = metrics if isinstance(metrics, dict) else {}
    totals = totals if isinstance(totals, dict) else {}
    parts: list = []
    lines = reasoning_lines(metrics)
    if lines:
        table = Table.grid(padding=(0, 1))
        table.add_row(Text("reasoning", style="bold"), "")
        for label, value in lines:
            table.add_row(label, value)
        parts.append(table)
    rows = source_rows(metrics, totals)
    if rows:
        failing = any(now or total for _, _, now, total in rows)
        table = Table.grid(padding=(0, 1))
        table.add_row(*[Text(h, style="bold") for h in ("reward source", "mean")
                        + (("unscorable now", "in stage") if failing else ())])
        for source, mean, now, total in rows:
            counts = [_count(now), _count(total)] if failing else []
            table.add_row(cut_text(source, 40, one_line=True), mean, *counts)
        parts.append(table)
    return Group(*parts) if parts else EMPTY


def _count(value: int) -> Text:
    return Text(fmt_num(value), style=UNSCORABLE_STYLE) if value else Text("-", style="dim")


class ReasoningFacts(Static):
    """`show(last_metrics, unscorable_totals)` of the shown stage of a reasoning run."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(EMPTY, id=id, classes=classes)
        self._shown: object = None

    def show(self, metrics: dict, totals: dict) -> None:
        metrics = metrics if isinstance(metrics, dict) else {}
        key = (tuple(reasoning_lines(metrics)), tuple(source_rows(metrics, totals)))
        if key == self._shown:
            return
        self._shown = key
        self.update(render_reasoning(metrics, totals))
