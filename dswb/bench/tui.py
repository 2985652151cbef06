"""`dswb bench tui`: how fast the dashboard starts, redraws, ingests events, and how small it stays.

- first frame: `python -m dswb tui` in a subprocess (interpreter start, imports, app, one frame
  drawn headless, exit), on a runs root of recorded runs; the runs list and `--attach`.
- redraw: one dashboard refresh after a live update (one new step in every series; downsample
  every plotted series, rebuild the plots, composite the whole screen) with 1,000 / 100,000 /
  1,000,000 points per series, at 200x60 and 80x24.
- ingest: the follower's reader folding a 1,000,000-event `events.jsonl` (in a subprocess, which
  also reports its resident memory before and after).
Goals: first frame < 1 s, redraw < 50 ms at 1,000,000 points, > 50,000 events/s.

`--live` measures instead what watching costs the run it watches (`dswb.bench.tui_live`).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"first_frame_s": 1.0, "redraw_ms_1e6": 50.0, "events_per_s": 50_000}
PLOTTED = ("loss", "lr", "grad_norm", "tokens_per_s", "pad_efficiency", "step_time_s")


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- first frame ------------------------------------------------------------------------------
def first_frame(runs_root: Path, attach: str | None, repeats: int) -> dict:
    """Seconds from spawning `python -m dswb tui` to its first drawn frame, and to its exit."""
    frames, exits = [], []
    cmd = [sys.executable, "-m", "dswb", "tui", "--runs-root", str(runs_root)]
    if attach:
        cmd += ["--attach", attach]
    env = {**os.environ, "DSWB_TUI_FIRST_FRAME": "1"}
    for _ in range(repeats):
        start = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        end = time.time()
        if out.returncode != 0 or "first-frame" not in out.stdout:
            raise RuntimeError(f"dswb tui failed: {out.stderr.strip()[-500:]}")
        frames.append(float(out.stdout.split("first-frame", 1)[1].split()[0]) - start)
        exits.append(end - start)
    return {"median_s": statistics.median(frames), "min_s": min(frames), "exit_median_s": statistics.median(exits),
            "repeats": repeats}


# -- redraw ---------------------------------------------------------------------------------------
def _fill(model, points: int) -> None:
    """Give the model's stage `points` values per plotted series, as a long run would have."""
    from dswb.tui.history import SeriesHistory

    with model.lock:
        stage = model.stage("pretrain")
        stage.total_steps = points
        steps = list(range(1, points + 1))
        for k, name in enumerate(PLOTTED):
            history = SeriesHistory(model.capacity)
            ys = [1.0 + 5.0 / (1 + i / 1000) + ((i * 7919 + k) % 101) / 500 for i in steps]
            history.extend(steps, ys)
            stage.series[name] = history
        evals = SeriesHistory(model.capacity)
        every = max(1, points // 200)
        evals.extend(steps[::every], [1.0 + 5.0 / (1 + i / 1000) for i in steps[::every]])
        stage.eval_series["val_loss"] = evals
        stage.last_step = points
        stage.last_metrics = {name: stage.series[name].last_y for name in PLOTTED}
        model.version += 1


async def _redraw_times(root: Path, run_id: str, sizes: list[int], terminal: tuple[int, int],
                        repeats: int) -> list[dict]:
    from dswb.tui.app import create_app
    from dswb.tui.screens.dashboard import DashboardScreen
    from dswb.tui.widgets import MetricPlot

    app = create_app(root, run_id, poll_interval=3600, scan_interval=3600, refresh_s=0.0)
    rows = []
    async with app.run_test(size=terminal) as pilot:
        for _ in range(200):
            await pilot.pause()
            if isinstance(app.screen, DashboardScreen) and app.followers and \
                    all(f.caught_up.is_set() for f in app.followers.values()):
                break
        screen = app.screen
        model = next(iter(app.followers.values())).model
        for points in sizes:
            _fill(model, points)
            times = []
            for r in range(repeats):
                with model.lock:  # a live update: one more step in every series
                    stage = model.stages["pretrain"]
                    for name in PLOTTED:
                        stage.series[name].append(points + r + 1, 1.0 + r / 100)
                    stage.last_step = points + r + 1
                start = time.perf_counter()
                screen.redraw()
                screen._compositor.render_update(full=True, screen_stack=app._background_screens)
                times.append(time.perf_counter() - start)
            plots = [p for p in screen.query(MetricPlot) if p.display and p.region.area]
            rows.append({"points": points, "terminal": f"{terminal[0]}x{terminal[1]}",
                         "median_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times),
                         "plots": len(plots), "drawn_per_plot": max((p.points_drawn for p in plots), default=0)})
        await pilot.press("q")
    return rows


def redraw(sizes: list[int], repeats: int) -> list[dict]:
    from dswb.tui.synthetic import RunSpec, write_run

    with tempfile.TemporaryDirectory(prefix="dswb-bench-tui-") as tmp:
        root = Path(tmp)
        paths = write_run(root, RunSpec("20250101-000000-bench", stages=[("pretrain", 10)]))
        rows = []
        for terminal in ((200, 60), (80, 24)):
            rows += asyncio.run(_redraw_times(root, paths.run_id, sizes, terminal, repeats))
        return rows


# -- ingest ---------------------------------------------------------------------------------------
INGEST_SCRIPT = """
import json, sys, time
from pathlib import Path
from dswb.bench.tui import _rss_mb
from dswb.tui.follower import ingest_rate
path = Path(sys.argv[1])
before = _rss_mb()
events, seconds, model = ingest_rate(path)
stage = model.stages["pretrain"]
stored = sum(h.stored() for h in stage.series.values())
print(json.dumps({"events": events, "seconds": seconds, "events_per_s": events / seconds,
                  "rss_before_mb": before, "rss_after_mb": _rss_mb(), "series": len(stage.series),
                  "values_held": stored, "loss_points": stage.series["loss"].n}))
"""


def ingest(n_events: int) -> dict:
    from dswb.tui.synthetic import write_big_events

    with tempfile.TemporaryDirectory(prefix="dswb-bench-ingest-") as tmp:
        path = Path(tmp) / "run" / "events.jsonl"
        path.parent.mkdir()
        start = time.perf_counter()
        write_big_events(path, n_events)
        written = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
        out = subprocess.run([sys.executable, "-c", INGEST_SCRIPT, str(path)], capture_output=True, text=True,
                             timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip()[-800:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result.update(file_mb=size_mb, write_s=written)
        return result


# -- the benchmark --------------------------------------------------------------------------------
def run(quick: bool = False, live: bool = False, threads: int | None = None) -> dict:
    if live:
        from dswb.bench.tui_live import run_live

        return run_live(quick=quick, threads=threads)
    from dswb.tui.synthetic import write_fixtures

    sizes = [1_000, 10_000] if quick else [1_000, 100_000, 1_000_000]
    n_events = 20_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="dswb-bench-ff-") as tmp:
        root = Path(tmp) / "runs"
        write_fixtures(root)
        repeats = 2 if quick else 5
        frames = {"runs_list": first_frame(root, None, repeats), "attach": first_frame(root, "finished", repeats)}
    return {
        "quick": quick,
        "first_frame": frames,
        "redraw": redraw(sizes, repeats=3 if quick else 7),
        "ingest": ingest(n_events),
        "goals": GOALS,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def format_table(result: dict) -> str:
    if result.get("live"):
        from dswb.bench.tui_live import format_live

        return format_live(result)
    lines = ["dswb bench tui" + (" (quick)" if result.get("quick") else ""), ""]
    lines.append(f"{'first frame (python -m dswb tui)':44s} {'median':>9s} {'min':>9s} {'exit':>9s}")
    for name, row in result["first_frame"].items():
        label = "runs list" if name == "runs_list" else "--attach RUN (dashboard)"
        lines.append(f"  {label:42s} {row['median_s']:8.3f}s {row['min_s']:8.3f}s {row['exit_median_s']:8.3f}s")
    lines += ["", f"{'dashboard redraw':24s} {'points/series':>14s} {'plots':>6s} {'drawn/plot':>11s} {'median':>10s} {'max':>10s}"]
    for row in result["redraw"]:
        lines.append(f"  {row['terminal']:22s} {row['points']:14,d} {row['plots']:6d} {row['drawn_per_plot']:11,d} "
                     f"{row['median_ms']:8.1f}ms {row['max_ms']:8.1f}ms")
    ing = result["ingest"]
    lines += ["", "follower ingest",
              f"  {ing['events']:,} events ({ing['file_mb']:.0f} MB) in {ing['seconds']:.2f}s: "
              f"{ing['events_per_s']:,.0f} events/s",
              f"  RSS {ing['rss_before_mb']:.0f} MB before, {ing['rss_after_mb']:.0f} MB after "
              f"({ing['series']} series, {ing['values_held']:,} values held for {ing['loss_points']:,} steps)"]
    goals = result["goals"]
    worst_frame = max(r["median_s"] for r in result["first_frame"].values())
    big = [r for r in result["redraw"] if r["points"] == max(x["points"] for x in result["redraw"])]
    worst_redraw = max(r["median_ms"] for r in big)
    lines += ["", "goals",
              _goal(f"first frame < {goals['first_frame_s']:g} s", worst_frame < goals["first_frame_s"], f"{worst_frame:.3f}s"),
              _goal(f"redraw < {goals['redraw_ms_1e6']:g} ms at {big[0]['points']:,} points", worst_redraw < goals["redraw_ms_1e6"],
                    f"{worst_redraw:.1f}ms"),
              _goal(f"ingest > {goals['events_per_s']:,} events/s", ing["events_per_s"] > goals["events_per_s"],
                    f"{ing['events_per_s']:,.0f}/s")]
    return "\n".join(lines)


def _goal(text: str, ok: bool, value: str) -> str:
    return f"  {'met ' if ok else 'MISS'}  {text:44s} {value}"
