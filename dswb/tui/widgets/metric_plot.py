"""A line plot of one or more metric series (textual-plotext), fed downsampled views.

The plot never keeps a history: `set_source(fn)` gives it a function that, asked for at
most N points, returns `[(label, xs, ys), ...]` read from the run model. `replot()` asks for
about twice the plot's width (braille cells hold two dots across), then clear -> plot -> refresh.
"""

from __future__ import annotations

from typing import Callable, Sequence

from textual.app import RenderResult
from textual.strip import Strip
from textual_plotext import PlotextPlot

from dswb.tui.ansi import ansi_to_strips, ansi_to_text, matrix_to_strips
from dswb.tui.format import fmt_num, fmt_tick, nice_ticks

Series = tuple[str, Sequence[float], Sequence[float]]
Source = Callable[[int], list[Series]]

COLORS = ("cyan", "orange", "green", "magenta")
NO_COLOR_MARKERS = ("braille", "dot", "x", "+")


class MetricPlot(PlotextPlot):
    """A titled line plot; shows the last value of its first series in the title."""

    DEFAULT_CSS = """
    MetricPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, title: str, *, xlabel: str = "step", id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.metric_title = title
        self.xlabel = xlabel
        self.source: Source | None = None
        self.points_drawn = 0
        self.rebuilds = 0
        self._drawn_key: object = None
        self._strips: list[Strip] | None = None
        self._strips_size = None

    def render(self) -> RenderResult:
        """As `PlotextPlot.render`, with a faster ANSI decoder (used only outside `render_line`)."""
        return ansi_to_text(self._build())

    def _build(self) -> str:
        width, height = self.size.width, self.size.height
        self.plt.plotsize(width, height)
        self.plt._set_size(width, height)
        self.plt.theme(self._get_plotext_theme_name(self.app.theme))
        return self.plt.build()

    def refresh(self, *args, **kwargs):
        self._strips = None  # anything that repaints the plot rebuilds it
        return super().refresh(*args, **kwargs)

    def render_line(self, y: int) -> Strip:
        """Textual's Line API: the plot's lines straight from plotext's cell grid, built once per repaint."""
        size = self.size
        if self._strips is None or self._strips_size != size:
            self._strips = self._build_strips(size.width, size.height)
            self._strips_size = size
        return self._strips[y] if 0 <= y < len(self._strips) else Strip.blank(size.width)

    def _build_strips(self, width: int, height: int) -> list[Strip]:
        plt = self.plt
        plt.plotsize(width, height)
        plt._set_size(width, height)
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        try:  # plotext internals (plotext < 6): the cell grid, without its ANSI rendering
            plt._set_sizes()
            plt._build_matrix()
            return matrix_to_strips(plt.monitor.matrix, width, height)
        except AttributeError:
            return ansi_to_strips(plt.build(), width, height)

    def set_source(self, source: Source | None) -> None:
        self.source = source
        self.replot()

    def points_wanted(self) -> int:
        """Twice the canvas width (the widget less the y labels and frame): a braille cell holds
        two dots across, so more points than this cannot show."""
        return max(16, 2 * ((self.size.width or 40) - 10))

    def on_resize(self) -> None:
        self.replot()

    def replot(self) -> None:
        """Redraw from the source (cheap when the widget is hidden: nothing is built yet)."""
        series = self.source(self.points_wanted()) if self.source is not None else []
        series = [s for s in series if len(s[1])]
        no_color = self.app.no_color if self.is_attached else False
        key = (self.metric_title, self.size, no_color, [(label, xs[-1], len(xs), ys[-1], ys) for label, xs, ys in series])
        if key == self._drawn_key:
            return  # same view as on screen: no rebuild
        self._drawn_key = key
        self.rebuilds += 1
        plt = self.plt
        plt.clear_data()
        self.points_drawn = sum(len(s[1]) for s in series)
        if not series:
            plt.title(f"{self.metric_title}: no data yet")
            self.refresh()
            return
        for i, (label, xs, ys) in enumerate(series):
            kwargs = {"marker": NO_COLOR_MARKERS[i % 4] if no_color else "braille"}
            if not no_color:
                kwargs["color"] = COLORS[i % len(COLORS)]
            if len(series) > 1:
                kwargs["label"] = label
            plt.plot(list(xs), list(ys), **kwargs)
        first_label, _, first_ys = series[0]
        plt.title(f"{self.metric_title}  {fmt_num(first_ys[-1])}")
        plt.xlabel(self.xlabel)
        x_lo = min(s[1][0] for s in series)
        x_hi = max(s[1][-1] for s in series)
        ticks = nice_ticks(x_lo, x_hi, max(2, (self.size.width or 40) // 12))
        plt.xticks(ticks, [fmt_tick(t) for t in ticks])
        self.refresh()
