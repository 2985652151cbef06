"""`dswb runs plot`: metrics from a run's events drawn in the terminal with plotext.

Long series are downsampled to about two points per column (the min and max of each bucket,
`dswb.stats.minmax_downsample`) before plotext sees them, so a million-point run plots as fast
as a short one and keeps its spikes. Values plotext cannot draw (beyond +-1e300, subnormal) are
clipped with a note; every name from the run file is printed through `safe_text`.
"""

from __future__ import annotations

import math
import shutil
import sys
from typing import Annotated

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, NAME_LIMIT, RunRef, RunsRoot, safe_text, user_errors
from dswb.cli.runs_scan import Series, collect_series
from dswb.errors import UserError
from dswb.rundir import resolve_run
from dswb.stats import minmax_downsample

PLOT_LIMIT = 1e300        # plotext overflows beyond this (and below 1e-300 in magnitude)


def plot_value(v: float) -> tuple[float, bool]:
    """`v` moved into the range plotext can draw (|v| <= 1e300, no subnormals); True if it moved."""
    if v > PLOT_LIMIT or v < -PLOT_LIMIT:
        return math.copysign(PLOT_LIMIT, v), True
    if v != 0 and abs(v) < 1 / PLOT_LIMIT:
        return 0.0, True
    return v, False


def _drawable(xs: list[float], ys: list[float]) -> tuple[list[float], list[float], int]:
    out_x, out_y, moved = [], [], 0
    for x, y in zip(xs, ys):
        (x, mx), (y, my) = plot_value(float(x)), plot_value(float(y))
        out_x.append(x)
        out_y.append(y)
        moved += mx or my
    return out_x, out_y, moved


def render_plot(series: dict[str, dict[str, Series]], width: int, height: int, x_axis: str,
                title: str = "", color: bool = False) -> str:
    """One chart per metric (one line per stage), stacked, as text; notes about clipped points
    follow the charts."""
    import plotext as plt

    notes = []

    plt.clear_figure()
    names = list(series)
    if len(names) > 1:
        plt.subplots(len(names), 1)
    plt.plot_size(width, height * len(names))
    for row, name in enumerate(names, 1):
        if len(names) > 1:
            plt.subplot(row, 1)
        by_stage = series[name]
        for stage, s in by_stage.items():
            # the first and last points plus a min and a max for each of `width` buckets
            xs, ys, moved = _drawable(*minmax_downsample(s.xs, s.ys, 2 * width + 2))
            if moved:
                notes.append(f"note: {moved} point(s) of {safe_text(name, NAME_LIMIT)} ({safe_text(stage, NAME_LIMIT)}) "
                             f"beyond +-1e300 or below 1e-300 in size are drawn clipped")
            plt.plot(xs, ys, label=safe_text(stage, NAME_LIMIT) if len(by_stage) > 1 else None)
        label = safe_text(name, NAME_LIMIT)
        plt.title(f"{title}  {label}".strip() if row == 1 else label)
        plt.xlabel("step" if x_axis == "step" else "seconds")
    text = plt.build()
    plt.clear_figure()
    text = text if color else plt.uncolorize(text)
    return "\n".join([text, *notes])


@user_errors
def plot(run: RunRef,
         metrics: Annotated[list[str], typer.Option("--metric", "-m", help="Metric to plot (repeatable; one chart each).")] = ["loss"],  # noqa: B006
         runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
         stage: Annotated[str | None, typer.Option("--stage", help="Only this stage (default: every stage, one line each).")] = None,
         x_axis: Annotated[str, typer.Option("--x", help="x axis: step or time (seconds since the first event).")] = "step",
         width: Annotated[int | None, typer.Option("--width", min=20, help="Chart width in columns (default: terminal width).")] = None,
         height: Annotated[int | None, typer.Option("--height", min=5, help="Height of each chart in lines.")] = None,
         color: Annotated[bool | None, typer.Option("--color/--no-color", help="ANSI colours (default: on a TTY).")] = None) -> None:
    """Plot metrics from a run's events in the terminal (metrics, eval and system events).

    Example: `dswb runs plot latest --metric loss --metric lr --width 100`
    """
    if x_axis not in ("step", "time"):
        raise UserError(f"--x: expected step or time, got '{x_axis}'")
    paths = resolve_run(run, runs_root)
    series, available, stages = collect_series(paths.events, metrics, stage, x_axis)
    if stage is not None and stage not in stages:
        raise UserError(f"run {paths.run_id} has no metrics for stage '{stage}' "
                        f"(stages: {safe_text(', '.join(sorted(stages))) or 'none yet'})")
    for name in metrics:
        if not series[name]:
            names = sorted(available)
            known = ", ".join(safe_text(n, NAME_LIMIT) for n in names[:30]) or "none recorded yet"
            if len(names) > 30:
                known += f", ... {len(names) - 30} more"
            raise UserError(f"metric '{name}' not found in run {paths.run_id} (available: {known})")
    term = shutil.get_terminal_size((100, 30))
    width = width or max(40, term.columns)
    height = height or max(10, min(25, (term.lines - 2) // len(metrics)))
    if color is None:
        color = sys.stdout.isatty()
    try:
        text = render_plot(series, width, height, x_axis, title=paths.run_id, color=color)
    except Exception as exc:  # noqa: BLE001 - a plotting library fault must not become a traceback
        typer.echo(f"error: could not draw the plot ({type(exc).__name__}: {safe_text(exc)})", err=True)
        raise typer.Exit(1) from None
    typer.echo(text)
