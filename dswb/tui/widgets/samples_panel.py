"""The latest RL rollouts of a run (`samples` events): prompt, completion, rewards, advantage.

Users of RL read completions first when something looks wrong; this shows the newest batch a
stage recorded, beside the curves. Completions are shown as written, line breaks as `⏎`.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from dswb.util.fmt import cut_text, finite_or_none, fmt_num

EMPTY = "no samples yet (PPO and GRPO record a few rollouts every few iterations)"


class SamplesPanel(Static):
    """`show(latest, total)`: the newest `samples` event (as the model keeps it) and how many
    the run wrote."""

    DEFAULT_CSS = """
    SamplesPanel { height: auto; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(EMPTY, id=id, classes=classes)
        self._shown: object = None

    def show(self, latest: dict | None, total: int) -> None:
        key = (id(latest), total)
        if key == self._shown:
            return
        self._shown = key
        self.update(render_samples(latest, total))


def render_samples(latest: object, total: object = 1) -> Group | str:
    if not isinstance(latest, dict) or not isinstance(latest.get("samples"), list):
        return EMPTY
    samples = [s for s in latest["samples"] if isinstance(s, dict)]
    head = Text()
    stage = cut_text(latest.get("stage") or "?", 100, one_line=True)
    head.append(f"{stage} step {fmt_num(latest.get('step'))}", style="bold")
    head.append(f"  {len(samples)} rollouts, the latest of {fmt_num(total)} recorded", style="dim")
    table = Table(expand=True, show_edge=False, pad_edge=False, box=None, padding=(0, 1), header_style="bold")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("prompt", ratio=2, overflow="fold")
    table.add_column("completion", ratio=3, overflow="fold")
    table.add_column("reward", justify="right", no_wrap=True)
    table.add_column("by source", ratio=2, overflow="fold")
    table.add_column("adv", justify="right", no_wrap=True)
    table.add_column("len", justify="right", no_wrap=True)
    table.add_column("end", no_wrap=True)
    for i, sample in enumerate(samples[:16], start=1):
        rewards = sample.get("rewards") if isinstance(sample.get("rewards"), dict) else {}
        sources = "  ".join(f"{cut_text(k, 50, one_line=True)} {fmt_num(v)}" for k, v in list(rewards.items())[:8])
        ended = sample.get("ended")
        table.add_row(str(i), cut_text(sample.get("prompt") or "", 1100, one_line=True),
                      Text(cut_text(sample.get("completion") or "", 1100, one_line=True), style="cyan"),
                      _signed(sample.get("reward")), sources, _signed(sample.get("advantage")),
                      fmt_num(sample.get("length")),
                      Text("eos", style="green") if ended is True else Text("cut", style="yellow") if ended is False else "-")
    return Group(head, table)


def _signed(value: object) -> Text:
    number = finite_or_none(value)
    if number is None:
        return Text(fmt_num(value))
    return Text(fmt_num(number), style="green" if number > 0 else "red" if number < 0 else "")
