"""A line plot of one or more metric series, drawn with braille dots (`dswb.tui.chart`).

The plot keeps no history: its `source()` returns `(series, x_end)` read from the run model
(`[(label, xs, ys[, clean]), ...]` and the x where the axis should end, e.g. the stage's total
steps; `clean` says the points need no checking, see `chart.Series`).
`replot()` bins the points per pixel column and compares the resulting picture with the one on
screen: nothing is rebuilt when nothing visible changed, and only the rows that changed are
repainted (a live plot with stable axes changes a few cells at its right end per step).
"""

from __future__ import annotations

from typing import Callable

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from dswb.tui import chart
from dswb.util.fmt import fmt_num

SeriesData = tuple  # (label, xs, ys) or (label, xs, ys, clean)
PlotData = tuple[list[SeriesData], "float | None"]
Source = Callable[[], PlotData]

RUN_STYLES = {
    "title": Style(bold=True), "axis": Style(dim=True), "label": Style(dim=True),
    "s0": Style(color="cyan"), "s1": Style(color="orange1"), "s2": Style(color="green"), "s3": Style(color="magenta"),
}


class MetricPlot(Widget):
    """A titled line plot; the title shows the last value of its first series."""

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
        self.rebuilds = 0  # pictures built (a replot that changes nothing visible builds none)
        self.rows_repainted = 0
        self._picture: chart.Picture | None = None
        self._lines: chart.ChartLines = []
        self._strips: list[Strip] = []
        self._styles: dict[str | None, Style] = {}

    def set_source(self, source: Source | None) -> None:
        self.source = source
        self.replot()

    def on_resize(self) -> None:
        self.replot()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._picture = None  # colours changed (theme): rebuild at the next replot
        self._styles = {}

    def replot(self) -> None:
        """Rebuild from the source if the picture changed; repaint only the rows that did."""
        width, height = self.size.width, self.size.height
        if not width or not height:
            return  # hidden or not laid out yet: it replots when it gets a size
        series, x_end = self.source() if self.source is not None else ([], None)
        title = self.metric_title
        series = [s for s in series if len(s[1])]
        if series:
            title = f"{self.metric_title}  {fmt_num(series[0][2][-1])}"
        else:
            title = f"{self.metric_title}: no data yet"
        no_color = self.app.no_color if self.is_attached else False
        pic, drawn = chart.picture(title, [chart.Series(*s) for s in series], width, height,
                                   xlabel=self.xlabel, x_end=x_end, dotted_after_first=no_color,
                                   previous=self._picture)
        self.points_drawn = drawn
        if pic == self._picture:
            return
        self.rebuilds += 1
        lines = chart.render(pic)
        previous, resized = self._lines, self._picture is None or \
            (self._picture.width, self._picture.height) != (width, height)
        self._picture, self._lines = pic, lines
        self._strips = [self._strip(runs, width) for runs in lines]
        if resized or len(previous) != len(lines):
            self.rows_repainted += len(lines)
            self.refresh()
            return
        for y, (old, new) in enumerate(zip(previous, lines)):
            if old != new:  # repaint only the changed cells of the row (fewer bytes to the terminal)
                span = chart.changed_span(old, new) if self._strips[y].cell_length == width else None
                start, end = span if span is not None else (0, width)
                self.rows_repainted += 1
                self.refresh(Region(start, y, max(1, end - start), 1))

    def _strip(self, runs: list[chart.Run], width: int) -> Strip:
        styles = self._styles
        if not styles:
            base = self.rich_style
            styles = self._styles = {name: base + style for name, style in RUN_STYLES.items()}
            styles[None] = base
        return Strip([Segment(text, styles[style]) for text, style in runs]).adjust_cell_length(width)

    def render_line(self, y: int) -> Strip:
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)
