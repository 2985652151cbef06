"""The latest RL rollouts of a run (`samples` events): prompt, completion, rewards, advantage.

Users of RL read completions first when something looks wrong; this shows the newest batch a
stage recorded, beside the curves. Completions are shown as written, line breaks as `⏎`.
A row of a reasoning run (one with `think`) shows its answer, then its thinking folded to one
line with its length; unfolded (`t` on the dashboard), the whole thinking as written.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from dswb.tui.reasoning import answer_of, any_think, fold_think, has_think, think_size
from dswb.util.fmt import cut_text, finite_or_none, fmt_num

EMPTY = "no samples yet (PPO and GRPO record a few rollouts every few iterations)"


class SamplesPanel(Static):
    """`show(latest, total)`: the newest `samples` event (as the model keeps it) and how many
    the run wrote; `unfold` shows the thinking of a reasoning run in full."""

    DEFAULT_CSS = """
    SamplesPanel { height: auto; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(EMPTY, id=id, classes=classes)
        self._shown: object = None
        self._latest: dict | None = None
        self._total = 0
        self.unfold = False

    def show(self, latest: dict | None, total: int) -> None:
        self._latest, self._total = latest, total
        key = (id(latest), total, self.unfold)
        if key == self._shown:
            return
        self._shown = key
        self.update(render_samples(latest, total, unfold=self.unfold))

    def toggle_think(self) -> None:
        """Unfold the thinking of the rows that have one, or fold it again."""
        self.unfold = not self.unfold
        self.show(self._latest, self._total)


def render_samples(latest: object, total: object = 1, *, unfold: bool = False) -> Group | str:
    if not isinstance(latest, dict) or not isinstance(latest.get("samples"), list):
        return EMPTY
    samples = [s for s in latest["samples"] if isinstance(s, dict)]
    head = Text()
    stage = cut_text(latest.get("stage") or "?", 100, one_line=True)
    head.append(f"{stage} step {fmt_num(latest.get('step'))}", style="bold")
    head.append(f"  {len(samples)} rollouts, the latest of {fmt_num(total)} recorded", style="dim")
    if any_think(samples):
        head.append(f"  t: {'fold' if unfold else 'unfold'} the thinking", style="dim")
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
                      completion_cell(sample, unfold),
                      _signed(sample.get("reward")), sources, _signed(sample.get("advantage")),
                      fmt_num(sample.get("length")),
                      Text("eos", style="green") if ended is True else Text("cut", style="yellow") if ended is False else "-")
    return Group(head, table)


def completion_cell(sample: dict, unfold: bool = False) -> Text:
    """The completion as written; for a row with a thinking, its answer, then the thinking folded
    to one line (`unfold`: in full, line breaks kept)."""
    if not has_think(sample):
        return Text(cut_text(sample.get("completion") or "", 1100, one_line=True), style="cyan")
    think, tokens = sample["think"], sample.get("think_tokens")
    answer = answer_of(sample)
    cell = Text()
    cell.append("answer ", style="bold")
    if answer is None:
        cell.append("none (the thinking never closed)", style="yellow")
    else:
        cell.append(cut_text(answer, 1100, one_line=True), style="cyan")
    cell.append("\nthink ", style="bold")
    if unfold:
        cell.append(f"({think_size(think, tokens)})\n", style="dim")
        cell.append(cut_text(think.strip(), 2100), style="italic")
    else:
        cell.append(fold_think(think, tokens), style="dim")
    return cell


def _signed(value: object) -> Text:
    number = finite_or_none(value)
    if number is None:
        return Text(fmt_num(value))
    return Text(fmt_num(number), style="green" if number > 0 else "red" if number < 0 else "")
