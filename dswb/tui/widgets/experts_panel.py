"""Mixture-of-Experts routing: a layers x experts heat map of the latest load, each layer's
imbalance, router entropy and dead experts, and the imbalance of the worst layers over steps.

`show(moe, placeholder)` takes a stage's `MoeStage` (`dswb.tui.model_moe`, from `moe` events), or
None and the one line to show instead. The heat map fits the width it is drawn at: an expert gets
a cell of up to three columns, and when there are more experts than columns, neighbouring experts
share a cell shaded by the busiest of them (the legend says how many share one). The curve is a
`MetricPlot` whose source the screen gives (`plot_source`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from dswb.tui.widgets.metric_plot import MetricPlot, Source
from dswb.util.fmt import cut_text, fmt_num

if TYPE_CHECKING:
    from dswb.tui.model_moe import MoeLayer, MoeStage

# (load / the layer's mean load below which a cell gets this shade, character, style, legend)
SHADES = ((1e-300, "·", "bright_black", "0"), (0.5, "░", "blue", "<0.5x"), (1.5, "▒", "green", "~1x"),
          (3.0, "▓", "yellow", ">1.5x"), (math.inf, "█", "bold red", ">3x"))
IMBALANCE_WARN, IMBALANCE_BAD = 1.5, 3.0
FIXED_WIDTH = 5 + 9 + 7 + 14 + 8  # layer, imbalance, entropy, dead (at least) and the gaps between columns
DEAD_TEXT = 22  # characters of a layer's dead experts list before `+N`
PLOT_TITLE = "imbalance (max/mean load), worst layers"


class ExpertsPanel(Vertical):
    """The Experts tab: a caption, the heat map (scrolls when there are many layers) and the curve."""

    DEFAULT_CSS = """
    ExpertsPanel { height: 1fr; }
    ExpertsPanel > #experts-caption { height: auto; padding: 0 1; }
    ExpertsPanel > #experts-scroll { height: auto; max-height: 60%; padding: 0 1; }
    ExpertsPanel > MetricPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, plot_source: Source | None = None, *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._plot_source = plot_source
        self._shown: object = None

    def compose(self) -> ComposeResult:
        yield Static("no Mixture-of-Experts statistics in this run", id="experts-caption")
        with VerticalScroll(id="experts-scroll"):
            yield Static(id="experts-map")
        plot = MetricPlot(PLOT_TITLE, id="experts-plot")
        plot.source = self._plot_source
        yield plot

    def show(self, moe: MoeStage | None, placeholder: str = "") -> None:
        layers = moe.layers if moe is not None else ()
        key = (placeholder, moe.step, moe.events, layers) if moe is not None else placeholder
        if key == self._shown:
            return
        self._shown = key
        caption = self.query_one("#experts-caption", Static)
        has_data = bool(layers)
        self.query_one("#experts-scroll").display = has_data
        self.query_one("#experts-plot").display = has_data
        if not has_data:
            caption.update(Text(placeholder or "no Mixture-of-Experts statistics in this run", style="dim"))
            return
        caption.update(render_caption(moe))
        self.query_one("#experts-map", Static).update(LoadMap(layers, moe.experts))


def render_caption(moe: MoeStage) -> Text:
    """`deepseek_v3 · balance aux_free · 8 experts, top-2 · 3 MoE layers · step 200, tokens of the last 10 steps`."""
    text = Text()
    text.append(cut_text(moe.family or "MoE", 40, one_line=True), style="bold")
    if moe.balance:
        text.append(f" · balance {cut_text(moe.balance, 20, one_line=True)}")
    if moe.experts:
        text.append(f" · {moe.experts} experts")
        if moe.top_k:
            text.append(f", top-{moe.top_k}")
    text.append(f" · {len(moe.layers)} MoE layer{'s' if len(moe.layers) != 1 else ''}")
    covered = f", tokens of the last {fmt_num(moe.steps)} steps" if moe.steps else ""
    text.append(f" · step {fmt_num(moe.step)}{covered} (latest of {moe.events} samples)", style="dim")
    if moe.skipped:
        text.append(f" · {moe.skipped} malformed layer entr{'ies' if moe.skipped != 1 else 'y'} left out",
                    style="yellow")
    return text


def shade(ratio: float) -> tuple[str, str]:
    """The character and style of a cell whose load is `ratio` times the layer's mean."""
    for limit, char, style, _ in SHADES:
        if ratio < limit:
            return char, style
    return SHADES[-1][1], SHADES[-1][2]


def legend(group: int = 1) -> Text:
    """`· 0  ░ <0.5x  ▒ ~1x  ▓ >1.5x  █ >3x  the layer's mean load`, and how many experts share a cell."""
    text = Text()
    for _, char, style, label in SHADES:
        text.append(char, style=style)
        text.append(f" {label}  ")
    text.append("the layer's mean load", style="dim")
    if group > 1:
        text.append(f"\n{group} experts per cell, shaded by the busiest", style="dim")
    return text


def cell_layout(experts: int, width: int) -> tuple[int, int]:
    """(experts per cell, columns per cell) to fit `experts` cells in `width` columns; experts share
    cells by powers of two (expert counts usually are, so cells split the experts evenly)."""
    experts, width = max(1, experts), max(1, width)
    if experts <= width:
        return 1, min(3, width // experts)
    group = 2
    while math.ceil(experts / group) > width:
        group *= 2
    return group, 1


def load_cells(load: tuple[float, ...], group: int, cell_width: int) -> Text:
    """One layer's row of the heat map: each cell shaded by its (busiest) expert's load vs the mean."""
    total = sum(load)
    text = Text()
    if not load:
        return text
    mean = total / len(load)
    pad = " " if cell_width > 1 else ""
    for start in range(0, len(load), group):
        busiest = max(load[start:start + group])
        char, style = shade(busiest / mean if mean > 0 else 0.0)
        text.append(char * max(1, cell_width - 1) + pad, style=style)
    return text


def ruler(cells: int, group: int, cell_width: int) -> str:
    """Expert indices above the heat map, as many as fit without touching."""
    label_width = len(str((cells - 1) * group)) + 1
    every = next((k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if k * cell_width >= label_width), cells)
    chars = [" "] * (cells * cell_width)
    for cell in range(0, cells, every):
        label = str(cell * group)
        at = cell * cell_width
        if at + len(label) <= len(chars):
            chars[at:at + len(label)] = label
    return "".join(chars).rstrip()


def dead_text(dead: tuple[int, ...], limit: int = DEAD_TEXT) -> Text:
    if not dead:
        return Text("-", style="dim")
    shown: list[str] = []
    for i, expert in enumerate(dead):
        rest = len(dead) - i
        if len(", ".join(shown + [str(expert)])) + (len(f" +{rest - 1}") if rest > 1 else 0) > limit:
            return Text(", ".join(shown) + f" +{rest}", style="red")
        shown.append(str(expert))
    return Text(", ".join(shown), style="red")


def imbalance_text(value: float | None) -> Text:
    if value is None:
        return Text("-", style="dim")
    style = "bold red" if value >= IMBALANCE_BAD else "yellow" if value >= IMBALANCE_WARN else ""
    return Text(f"{value:.2f}x", style=style)


def load_map(layers: tuple[MoeLayer, ...], experts: int | None, width: int) -> Group:
    """The legend, then the heat map with each layer's imbalance, entropy and dead experts, fitted to `width`."""
    experts = experts or max((len(layer.load) for layer in layers), default=1)
    group, cell_width = cell_layout(experts, width - FIXED_WIDTH)
    cells = math.ceil(experts / group)
    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold", show_edge=False)
    table.add_column("layer", justify="right", no_wrap=True)
    table.add_column(Text(ruler(cells, group, cell_width) or "experts"), no_wrap=True, min_width=cells * cell_width)
    table.add_column("imbalance", justify="right", no_wrap=True)
    table.add_column("entropy", justify="right", no_wrap=True)
    table.add_column("dead", no_wrap=True, overflow="ellipsis")
    for layer in layers:
        load = layer.load if len(layer.load) == experts else ()
        row = load_cells(load, group, cell_width) if load else Text("no load data", style="dim")
        share = layer.entropy_share
        table.add_row(str(layer.layer), row, imbalance_text(layer.imbalance),
                      f"{share:.2f}" if share is not None else Text("-", style="dim"), dead_text(layer.dead))
    return Group(legend(group), table)


class LoadMap:
    """A rich renderable: `load_map` at the width it is drawn at."""

    def __init__(self, layers: tuple[MoeLayer, ...], experts: int | None) -> None:
        self.layers, self.experts = layers, experts

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield load_map(self.layers, self.experts, options.max_width)


def experts_placeholder(run_has_moe: bool, stage: str | None, stats_every: int | None) -> str:
    """The one line the tab shows without statistics for the stage on screen."""
    if stats_every == 0:
        return "no Mixture-of-Experts statistics: moe.stats_every = 0 turns them off for this run"
    every = f"every moe.stats_every = {stats_every} steps" if stats_every else "every moe.stats_every steps"
    if run_has_moe and stage:
        return f"no Mixture-of-Experts statistics for stage {cut_text(stage, 40, one_line=True)} yet ({every})"
    return f"this run's model has no Mixture-of-Experts layers, or no routing statistics yet ({every})"
