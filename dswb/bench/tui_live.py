"""`dswb bench tui --live`: what watching a run costs the run, measured in a real terminal.

The same short training runs headless, then with `dswb tui --attach RUN` in a pseudo-terminal
of 200x60, then with `dswb watch RUN` in one, then (without --quick) headless again. For each
viewer it reports the run's median tokens/s against the headless runs' mean, the viewer's CPU share (its process's user +
system time from /proc over the seconds it followed the live run, 100 = one core) and the
bytes it wrote to its terminal per second over the same window. The viewer starts once the run
directory exists and is measured from the run's first step to its last.
Because the viewers' cost grows with the rate of steps they follow, and a busy machine slows
the training down, each viewer also follows a synthetic run written at the demo's pace on idle
cores (`REPLAY_STEP_S`) for a fixed time: its CPU share and bytes/s there are the goals' figures.
Goals: CPU <= 5% of a core, <= 16 KiB/s, throughput within 5% of headless.
Linux only (/proc, pty).
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

LIVE_GOALS = {"viewer_cpu_pct": 5.0, "viewer_bytes_per_s": 16 * 1024, "throughput_ratio": 0.95}
TERMINAL = (200, 60)
WARMUP_STEPS = 5  # the first steps (compilation, caches) are left out of the median tokens/s


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads) so far, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def median_tokens_per_s(events_path: Path, warmup: int = WARMUP_STEPS) -> tuple[float | None, int]:
    """(median tokens/s after the first `warmup` steps, steps seen) of a run's events."""
    from dswb.rundir import read_events

    values = []
    for event in read_events(events_path, ("metrics",)):
        metrics = event.get("metrics") or {}
        value = metrics.get("tokens_per_s") if isinstance(metrics, dict) else None
        step = event.get("step")
        if isinstance(value, (int, float)) and isinstance(step, int) and step > warmup:
            values.append(value)
    return (statistics.median(values) if values else None), len(values)


def step_window(events_path: Path) -> tuple[float, float] | None:
    """Wall-clock times of the run's first and last `metrics` events."""
    from dswb.rundir import read_events

    times = [e["t"] for e in read_events(events_path, ("metrics",)) if isinstance(e.get("t"), (int, float))]
    return (times[0], times[-1]) if len(times) >= 2 else None


class PtyProcess:
    """A command in a new pseudo-terminal of a fixed size; counts (and discards) what it writes."""

    def __init__(self, argv: list[str], size: tuple[int, int] = TERMINAL, env: dict | None = None) -> None:
        cols, rows = size
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows),
                       **(env or {})}
        environment.pop("COLORTERM", None)  # what an SSH session usually gets: 256 colours
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=environment,
                                     start_new_session=True, close_fds=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.master = master
        self.lock = threading.Lock()
        self.samples: list[tuple[float, int]] = []  # (time, bytes so far) after each read
        self.total = 0
        self.tail = b""
        self._reader = threading.Thread(target=self._read, name="pty-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.5)
                if not ready:
                    if self.proc.poll() is not None:
                        return
                    continue
                data = os.read(self.master, 1 << 16)
            except OSError:  # EIO: the other side closed
                return
            if not data:
                return
            with self.lock:
                self.total += len(data)
                self.samples.append((time.time(), self.total))
                self.tail = (self.tail + data)[-65536:]

    def bytes_between(self, start: float, end: float) -> int:
        """Bytes written from `start` to `end` (wall clock)."""
        with self.lock:
            before = [n for t, n in self.samples if t < start]
            upto = [n for t, n in self.samples if t <= end]
        return (upto[-1] if upto else 0) - (before[-1] if before else 0)

    def send(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except OSError:
            pass

    def finish(self, quit_keys: bytes | None, timeout: float = 20.0) -> int | None:
        """Ask the program to quit (or wait for it to end), then kill what is left."""
        if quit_keys and self.proc.poll() is None:
            self.send(quit_keys)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(5)
        self._reader.join(2)
        os.close(self.master)
        return code


def _train_argv(preset: str, steps: int, runs_root: Path, run_dir: Path, threads: int | None = None) -> list[str]:
    """The preset's pretraining stage alone (the demo's later stages would only lengthen the run)."""
    argv = [sys.executable, "-m", "dswb", "run", preset, "--set", f"train.steps={steps}", "--set",
            'run.stages=["pretrain"]', "--set", "checkpoint.every=0", "--runs-root", str(runs_root),
            "--run-dir", str(run_dir), "--quiet"]
    return argv + (["--set", f"run.threads={threads}"] if threads is not None else [])


def _viewer_argv(viewer: str, run_dir: Path, runs_root: Path, extra: list[str]) -> list[str]:
    base = [sys.executable, "-m", "dswb"]
    if viewer == "tui":
        return base + ["tui", "--runs-root", str(runs_root), "--attach", str(run_dir), *extra]
    return base + ["watch", str(run_dir), "--runs-root", str(runs_root), *extra]


def one_run(label: str, preset: str, steps: int, runs_root: Path, viewer: str | None = None,
            viewer_args: list[str] | None = None, threads: int | None = None) -> dict:
    """Train once, with `viewer` ("tui" or "watch") following it in a pty, or headless."""
    run_dir = runs_root / label
    start = time.time()
    train = subprocess.Popen(_train_argv(preset, steps, runs_root, run_dir, threads), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    watcher: PtyProcess | None = None
    cpu_marks: list[tuple[float, float]] = []
    try:
        if viewer is not None:
            deadline = time.time() + 120
            while not (run_dir / "status.json").exists() and train.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            watcher = PtyProcess(_viewer_argv(viewer, run_dir, runs_root, viewer_args or []))
        while train.poll() is None:
            if watcher is not None:
                cpu = process_cpu_s(watcher.pid)
                if cpu is not None:
                    cpu_marks.append((time.time(), cpu))
            time.sleep(0.25)
        _, stderr = train.communicate()
    except BaseException:
        if watcher is not None:
            watcher.finish(None, timeout=0.1)
        raise
    finally:
        if train.poll() is None:
            train.kill()
            train.wait(10)
    wall = time.time() - start
    if train.returncode != 0:
        raise RuntimeError(f"training ({label}) failed: {stderr.strip()[-800:]}")
    events = run_dir / "events.jsonl"
    tokens, steps_seen = median_tokens_per_s(events)
    result = {"label": label, "viewer": viewer or "headless", "wall_s": wall, "median_tokens_per_s": tokens,
              "steps": steps_seen}
    window = step_window(events)
    if window is not None:  # where the wall time went: start-up, the steps, what follows them
        result.update(before_steps_s=window[0] - start, steps_s=window[1] - window[0],
                      after_steps_s=start + wall - window[1])
    if watcher is not None:
        window = step_window(events)
        quit_keys = b"q" if viewer == "tui" else None
        if window is not None:
            t0, t1 = window
            inside = [(t, c) for t, c in cpu_marks if t0 <= t <= t1 + 0.3]
            cpu_s = inside[-1][1] - inside[0][1] if len(inside) >= 2 else None
            span = inside[-1][0] - inside[0][0] if len(inside) >= 2 else None
            sent = watcher.bytes_between(t0, t1)
            result.update(window_s=t1 - t0, steps_per_s=steps_seen / (t1 - t0) if t1 > t0 else None, viewer_cpu_s=cpu_s,
                          viewer_cpu_pct=100 * cpu_s / span if cpu_s is not None and span else None,
                          viewer_bytes=sent, viewer_bytes_per_s=sent / (t1 - t0) if t1 > t0 else None)
        result["viewer_total_bytes"] = watcher.total
        result["viewer_exit"] = watcher.finish(quit_keys)
        result["viewer_cpu_total_s"] = cpu_marks[-1][1] if cpu_marks else None
    return result


# -- a synthetic run written at a fixed rate: the viewers' cost without the training's pace ---
REPLAY_STEP_S = 0.15  # the demo's pace on 2 idle cores (issue 11: ~21k tokens/s, ~6.7 steps/s)
REPLAY_WARMUP_S = 3.0
REPLAY_STEPS = 600  # the demo's length: the x axis of the plots spans this many steps


def replay_writer(root: str, step_s: float, steps: int) -> None:
    """Write a synthetic one-stage run under `root`, one step every `step_s` seconds, with a
    live status (this process's pid), as a training would. Run in a subprocess."""
    import json
    import socket

    from dswb.tui.synthetic import RunSpec, run_events, status_for, write_run, write_status_fixed

    spec = RunSpec("20250101-000000-replay", stages=[("pretrain", steps)], step_s=step_s,
                   system_every=max(1, round(2.0 / step_s)))
    events = run_events(spec)
    paths = write_run(Path(root), spec, upto=3)
    with open(paths.events, "a") as f:
        for i, event in enumerate(events[3:], 3):
            f.write(json.dumps({**event, "t": round(time.time(), 3)}) + "\n")
            f.flush()
            if event["kind"] == "metrics":
                status = status_for(spec, events[: i + 1])
                status.update(host=socket.gethostname(), pid=os.getpid(), updated=time.time())
                write_status_fixed(paths, status)
                time.sleep(step_s)


def replay_cost(viewer: str, seconds: float, root: Path, step_s: float = REPLAY_STEP_S) -> dict:
    """A viewer's CPU share and terminal bytes/s while it follows a run written at `step_s`."""
    run_dir = root / "20250101-000000-replay"
    steps = max(REPLAY_STEPS, int((seconds + 30) / step_s))
    writer = subprocess.Popen([sys.executable, "-c", "import sys; from dswb.bench.tui_live import replay_writer; "
                               "replay_writer(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))",
                               str(root), str(step_s), str(steps)])
    try:
        deadline = time.time() + 60
        while not (run_dir / "status.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        watcher = PtyProcess(_viewer_argv(viewer, run_dir, root, []))
        try:
            time.sleep(REPLAY_WARMUP_S)  # start-up (imports, first frame) is not part of following
            c0, b0, t0 = process_cpu_s(watcher.pid), watcher.total, time.time()
            time.sleep(seconds)
            c1, b1, t1 = process_cpu_s(watcher.pid), watcher.total, time.time()
        finally:
            watcher.finish(b"q" if viewer == "tui" else None, timeout=5)
    finally:
        writer.kill()
        writer.wait(10)
    shutil.rmtree(run_dir, ignore_errors=True)
    cpu = 100 * (c1 - c0) / (t1 - t0) if c0 is not None and c1 is not None else None
    return {"viewer": viewer, "step_s": step_s, "seconds": t1 - t0, "viewer_cpu_pct": cpu,
            "viewer_bytes_per_s": (b1 - b0) / (t1 - t0)}


def run_live(quick: bool = False, preset: str = "presets/demo.toml", steps: int | None = None,
             viewer_args: list[str] | None = None, threads: int | None = None) -> dict:
    """Headless, then the dashboard attached, then `dswb watch`, on the same short training
    (`threads`: the training's torch threads, else the preset's; 0 = every core)."""
    steps = steps or (80 if quick else 250)
    with tempfile.TemporaryDirectory(prefix="dswb-bench-live-") as tmp:
        root = Path(tmp) / "runs"
        root.mkdir()
        runs = [one_run("headless", preset, steps, root, threads=threads),
                one_run("tui", preset, steps, root, "tui", viewer_args, threads=threads),
                one_run("watch", preset, steps, root, "watch", threads=threads)]
        if not quick:  # a second headless run at the end: the baseline is their mean (machine drift)
            runs.append(one_run("headless-2", preset, steps, root, threads=threads))
        replay = [replay_cost(viewer, 10 if quick else 30, root) for viewer in ("tui", "watch")]
    baselines = [r["median_tokens_per_s"] for r in runs if r["viewer"] == "headless" and r["median_tokens_per_s"]]
    base = statistics.mean(baselines) if baselines else None
    for row in runs:
        row["throughput_ratio"] = (row["median_tokens_per_s"] / base
                                   if base and row["median_tokens_per_s"] is not None else None)
    return {"live": True, "quick": quick, "preset": preset, "steps": steps, "threads": threads,
            "terminal": f"{TERMINAL[0]}x{TERMINAL[1]}", "runs": runs, "replay": replay, "goals": LIVE_GOALS,
            "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": sys.version.split()[0]}


def format_live(result: dict) -> str:
    threads = result.get("threads")
    lines = [f"dswb bench tui --live: {result['preset']} (pretraining, {result['steps']} steps, torch threads: "
             f"{'as the preset sets' if threads is None else threads or 'every core'}), "
             f"viewers in a {result['terminal']} pty ({result['cpus']} CPUs, load "
             f"{' '.join(f'{x:.2f}' for x in result['load_avg'])})", ""]
    lines.append(f"  {'':10s} {'wall':>8s} {'tokens/s':>10s} {'vs headless':>12s} {'steps/s':>8s} "
                 f"{'viewer CPU':>11s} {'terminal':>12s}")
    for row in result["runs"]:
        ratio = row.get("throughput_ratio")
        cpu = row.get("viewer_cpu_pct")
        rate = row.get("viewer_bytes_per_s")
        rate_text = f"{row['steps_per_s']:.1f}" if row.get("steps_per_s") else "-"
        lines.append(f"  {row['label']:10s} {row['wall_s']:7.1f}s {_num(row['median_tokens_per_s']):>10s} "
                     f"{(f'{100 * ratio:.1f}%' if ratio is not None else '-'):>12s} "
                     f"{rate_text:>8s} "
                     f"{(f'{cpu:.1f}%' if cpu is not None else '-'):>11s} "
                     f"{(f'{rate / 1024:.1f} KiB/s' if rate is not None else '-'):>12s}")
    replay = result.get("replay") or []
    if replay:
        lines += ["", f"  following a synthetic run written at {1 / replay[0]['step_s']:.1f} steps/s (the demo's pace "
                      "on idle cores), no training:"]
        for row in replay:
            cpu, rate = row.get("viewer_cpu_pct"), row["viewer_bytes_per_s"]
            lines.append(f"  {row['viewer']:10s} {row['seconds']:7.1f}s {'':>10s} {'':>12s} {1 / row['step_s']:8.1f} "
                         f"{(f'{cpu:.1f}%' if cpu is not None else '-'):>11s} {rate / 1024:>7.1f} KiB/s")
    goals = result["goals"]
    lines += ["", "goals (for each viewer; CPU and bytes at the replay's pace when there is one)"]
    paced = {row["viewer"]: row for row in replay}
    for row in (r for r in result["runs"] if r["viewer"] != "headless"):
        name = row["viewer"]
        cost = paced.get(name, row)
        cpu, rate, ratio = cost.get("viewer_cpu_pct"), cost.get("viewer_bytes_per_s"), row.get("throughput_ratio")
        lines.append(_goal(f"{name}: CPU <= {goals['viewer_cpu_pct']:g}% of a core",
                           cpu is not None and cpu <= goals["viewer_cpu_pct"], f"{cpu:.1f}%" if cpu is not None else "-"))
        lines.append(_goal(f"{name}: terminal <= {goals['viewer_bytes_per_s'] / 1024:g} KiB/s",
                           rate is not None and rate <= goals["viewer_bytes_per_s"],
                           f"{rate / 1024:.1f} KiB/s" if rate is not None else "-"))
        lines.append(_goal(f"{name}: throughput >= {100 * goals['throughput_ratio']:g}% of headless",
                           ratio is not None and ratio >= goals["throughput_ratio"],
                           f"{100 * ratio:.1f}%" if ratio is not None else "-"))
    lines += ["", "  The viewers' cost grows with the rate of steps they follow (steps/s): compare runs at",
              "  similar rates. On a busy machine the throughput ratio moves by several % between",
              "  identical runs."]
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) else "-"


def _goal(text: str, ok: bool, value: str) -> str:
    return f"  {'met ' if ok else 'MISS'}  {text:44s} {value}"
