"""A few lines about the run under the cursor in the runs list (path, stages, error)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from dswb.tui.follower import RunRow
from dswb.tui.format import state_badge
from dswb.util.fmt import fmt_num


class RunSummary(Static):
    """`show(row)`: where it lives, what it is doing, and its error if it failed."""

    DEFAULT_CSS = """
    RunSummary { height: auto; }
    """

    def show(self, row: RunRow | None, hint: str = "", root_label: str | None = None) -> None:
        self.update(render_summary(row, hint, root_label))


def render_summary(row: RunRow | None, hint: str = "", root_label: str | None = None) -> Text:
    if row is None:
        return Text(hint or "no run selected", style="dim")
    badge, style = state_badge(row.state)
    text = Text()
    text.append(f"{row.run_id} ", style="bold")
    text.append(badge, style=style)
    where = f"{root_label}/{row.run_id}" if root_label else str(row.paths.root)
    text.append(f"  {where}\n", style="dim")
    text.append(f"stage {row.stage}, step {row.step:,}")
    if row.total_steps:
        text.append(f" of {row.total_steps:,}")
    text.append(f", last loss {fmt_num(row.loss)}")
    if row.state == "lost":
        text.append("\nits process is gone without writing a final state (killed or rebooted);"
                    " press R to resume from the last checkpoint", style="magenta")
    if row.error:
        text.append(f"\nerror: {row.error}", style="bold red")
    return text
