"""One line naming the run, its state, stage, step, last loss and, for a stage that trains only
adapters (LoRA), how many of the model's parameters it trains."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from dswb.tui.format import state_badge
from dswb.util.fmt import cut_text, fmt_num


@dataclass(frozen=True)
class HeaderInfo:
    run_id: str
    state: str
    stage: str
    stage_index: int
    stage_count: int
    step: int
    total_steps: int
    loss: float | None
    error: str | None = None
    world: str = ""          # `2 x ddp` for a distributed run
    trainable: str = ""      # `trainable 590k of 124M (0.48%)` for a stage that trains adapters


class RunHeader(Static):
    """`▶ running  20250101-120000-demo  pretrain 1/2  step 150/300  loss 1.234`."""

    DEFAULT_CSS = """
    RunHeader { height: auto; max-height: 3; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    _shown: HeaderInfo | None = None

    def show(self, info: HeaderInfo) -> None:
        if info == self._shown:
            return
        lines_before = 2 if self._shown is not None and self._shown.error else 1
        self._shown = info
        self.update(render_header(info), layout=(2 if info.error else 1) != lines_before)


def render_header(info: HeaderInfo) -> Text:
    badge, style = state_badge(info.state)
    text = Text()
    text.append(f" {badge} ", style=f"reverse {style}" if style else "reverse")
    text.append(f" {cut_text(info.run_id, 80, one_line=True)}", style="bold")
    stage = cut_text(info.stage, 100, one_line=True)
    if info.stage_count > 1:
        stage += f" {info.stage_index}/{info.stage_count}"
    text.append(f"  {stage}")
    if info.world:
        text.append(f"  {cut_text(info.world, 40, one_line=True)}", style="bold")
    total = f"/{fmt_num(info.total_steps)}" if info.total_steps else ""
    text.append(f"  step {fmt_num(info.step)}{total}")
    text.append("  loss ", style="dim")
    text.append(fmt_num(info.loss), style="bold")
    if info.trainable:
        text.append(f"  {cut_text(info.trainable, 60, one_line=True)}", style="dim")
    if info.error:
        text.append(f"\n error: {cut_text(info.error, 300, one_line=True)}", style="bold red")
    return text
