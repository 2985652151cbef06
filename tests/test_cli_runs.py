"""`dswb runs list|show|plot|stop|pause|resume|checkpoint` and `dswb watch` on small run directories."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dswb.cli.app import app
from dswb.cli.common import fmt_num
from dswb.cli.runs_cmd import LIST_LIMIT
from dswb.cli.runs_plot import render_plot
from dswb.cli.runs_scan import Series
from dswb.cli.watch_cmd import format_event
from dswb.rundir import EventWriter, RunPaths, create_run_dir, read_events, write_status
from dswb.stats import minmax_downsample
from dswb.util.fmt import fmt_duration

pytestmark = pytest.mark.timeout(30)  # a watch or sampler that never ends fails fast
runner = CliRunner()
DEAD_PID = 999_999_999  # above any pid_max: never a live process
LOSSES = [4.0, 3.5, 3.1, 2.9, 2.6, 2.5]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def make_run(root: Path, run_id: str, state: str = "finished", pid: int | None = None,
             losses: list[float] = LOSSES, stage: str = "pretrain") -> RunPaths:
    """A run directory as the engine writes it: status, metrics each step, eval, system, alert."""
    paths = create_run_dir(root / run_id)
    paths.config.write_text('[run]\nname = "test"\n')
    events = EventWriter(paths.events)
    events.emit("run_start", None, 0, run_id=run_id, config={}, argv=[], resumed=False)
    events.emit("stage_start", stage, 0, total_steps=len(losses), model={"params": 1_300_000}, data={})
    for step, loss in enumerate(losses, 1):
        events.emit("metrics", stage, step, metrics={"loss": loss, "lr": 3e-4 * step / len(losses),
                                                    "tokens_per_s": 2000.0 + step})
        if step % 3 == 0:
            events.emit("eval", stage, step, metrics={"val_loss": loss + 0.5, "task_acc": step / 10})
            events.emit("system", stage, step, metrics={"cpu_pct": 150.0, "rss_mb": 900.0})
    events.emit("alert", stage, 2, level="warning", code="loss_spike", message="loss jumped at step 2",
                explain="")
    events.emit("checkpoint", stage, len(losses), path=f"checkpoints/{stage}/step-{len(losses)}",
                seconds=0.1, reason="final")
    if state in ("finished", "failed", "stopped"):
        events.emit("run_end", None, len(losses), state=state, error=None)
    events.close()
    write_status(paths.status, {
        "state": state, "pid": os.getpid() if pid is None else pid, "host": socket.gethostname(),
        "run_id": run_id, "stage": stage, "stages": [stage], "step": len(losses),
        "total_steps": len(losses), "started": time.time() - 60, "error": "boom" if state == "failed" else None,
        "eta_s": 30.0, "last_metrics": {"loss": losses[-1]},
    })
    return paths


def set_state(paths: RunPaths, state: str, error: str | None = None) -> None:
    from dswb.rundir import read_status

    write_status(paths.status, {**read_status(paths.status), "state": state, "error": error})


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "runs"


# --- formatting and downsampling --------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (None, "-"), (3, "3"), (2.34567, "2.346"), (3e-4, "3.00e-04"), (12345.0, "12.3k"),
    (2_500_000, "2.5M"), (0.0, "0"), (float("nan"), "nan"), (True, "True"), (-0.5, "-0.5"),
])
def test_fmt_num(value, text):
    assert fmt_num(value) == text


def test_fmt_duration():
    assert [fmt_duration(s) for s in (5, 192, 7500, 90000, None, -1)] == ["5s", "3m12s", "2h05m", "1d01h", "-", "-"]


def test_downsample_keeps_short_series():
    xs, ys = [1, 2, 3], [3.0, 1.0, 2.0]
    assert minmax_downsample(xs, ys, 10) == (xs, ys)


def test_downsample_keeps_extremes_in_order():
    rng = random.Random(0)
    n = 100_000
    xs = list(range(n))
    ys = [rng.gauss(0, 1) for _ in xs]
    ys[54_321] = 50.0   # a spike that striding would miss
    ys[7] = -50.0
    dx, dy = minmax_downsample(xs, ys, 202)  # as `runs plot` asks for a 100-column chart
    assert len(dx) <= 202 and len(dx) == len(dy)
    assert dx == sorted(dx) and len(set(dx)) == len(dx)
    assert max(dy) == 50.0 and min(dy) == -50.0
    assert dx[0] == 0 and dx[-1] == n - 1
    assert all(ys[x] == y for x, y in zip(dx, dy))


def test_plot_of_a_million_points_is_fast():
    n = 1_000_000
    s = Series(xs=list(range(n)), ys=[math.sin(i / 5000) + (i % 7) * 0.01 for i in range(n)])
    t0 = time.perf_counter()
    text = render_plot({"loss": {"pretrain": s}}, width=100, height=20, x_axis="step")
    assert time.perf_counter() - t0 < 2.0
    assert "loss" in text and "\x1b[" not in text
    assert len(text.splitlines()) <= 22


# --- runs list --------------------------------------------------------------------------------

def test_list_table(root):
    make_run(root, "20250101-120000-done")
    make_run(root, "20250101-130000-live", state="running")
    make_run(root, "20250101-140000-killed", state="running", pid=DEAD_PID)
    result = invoke("runs", "list", "--runs-root", root)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "run" in lines[0] and "state" in lines[0] and "loss" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["20250101-120000-done"][1] == "finished"
    assert rows["20250101-130000-live"][1] == "running"
    assert rows["20250101-140000-killed"][1] == "lost"
    assert rows["20250101-120000-done"][3:5] == ["6/6", "2.5"]
    assert [line.split()[0] for line in lines[2:]][0] == "20250101-140000-killed"  # newest first


def test_list_json_and_limit(root):
    for i in range(LIST_LIMIT + 2):
        make_run(root, f"20250101-{i:06d}-r", losses=[1.0])
    result = invoke("runs", "list", "--runs-root", root, "--json")
    runs = json.loads(result.stdout)
    assert len(runs) == LIST_LIMIT
    assert runs[0]["run_id"] == f"20250101-{LIST_LIMIT + 1:06d}-r" and runs[0]["state"] == "finished"
    assert len(json.loads(invoke("runs", "list", "--runs-root", root, "--json", "--all").stdout)) == LIST_LIMIT + 2
    text = invoke("runs", "list", "--runs-root", root).stdout
    assert "2 older runs not shown (--all)" in text


def test_list_empty_root(tmp_path):
    result = invoke("runs", "list", "--runs-root", tmp_path / "none")
    assert result.exit_code == 0 and "no runs under" in result.stdout


# --- runs show --------------------------------------------------------------------------------

def test_show_statistics_match_the_events(root):
    make_run(root, "20250101-120000-a")
    result = invoke("runs", "show", "a", "--runs-root", root, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    loss = data["stats"]["metrics"]["pretrain"]["loss"]
    assert loss["count"] == len(LOSSES) and loss["last"] == LOSSES[-1]
    assert loss["mean"] == pytest.approx(statistics.fmean(LOSSES))
    assert loss["std"] == pytest.approx(statistics.pstdev(LOSSES))
    assert (loss["min"], loss["max"]) == (min(LOSSES), max(LOSSES))
    assert data["stats"]["eval"]["pretrain"]["val_loss"]["count"] == 2
    assert data["stats"]["system"]["pretrain"]["cpu_pct"]["mean"] == 150.0
    assert data["last_eval"]["step"] == 6 and data["alert_count"] == 1
    assert data["state"] == "finished"


def test_show_text(root):
    make_run(root, "20250101-120000-a", state="failed")
    result = invoke("runs", "show", "latest", "--runs-root", root)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("20250101-120000-a", "failed", "error        boom", "metrics (pretrain)",
                 "eval (pretrain)", "system (pretrain)", "last eval", "val_loss=3", "alerts (1)",
                 "loss_spike", "checkpoints/pretrain/step-6"):
        assert text in out, text
    loss_row = next(line for line in out.splitlines() if line.startswith("loss "))
    assert loss_row.split()[1:] == ["6", fmt_num(statistics.fmean(LOSSES)),
                                    fmt_num(statistics.pstdev(LOSSES)), "2.5", "4", "2.5"]


def test_show_tolerates_a_torn_last_line_and_no_status(root):
    paths = create_run_dir(root / "20250101-120000-new")
    paths.config.write_text("")
    with open(paths.events, "w") as f:
        f.write(json.dumps({"t": 1.0, "kind": "metrics", "stage": "pretrain", "step": 1,
                            "metrics": {"loss": 2.0}}) + "\n")
        f.write('{"t": 2.0, "kind": "metr')
    result = invoke("runs", "show", "new", "--runs-root", root)
    assert result.exit_code == 0, result.output
    assert "unknown (no status.json yet)" in result.stdout
    assert "loss" in result.stdout


def test_show_missing_run(root):
    make_run(root, "20250101-120000-a")
    line = one_error_line(invoke("runs", "show", "nope", "--runs-root", root))
    assert "no run 'nope'" in line


# --- runs plot --------------------------------------------------------------------------------

def test_plot(root):
    make_run(root, "20250101-120000-a")
    result = invoke("runs", "plot", "a", "--runs-root", root, "--metric", "loss", "-m", "val_loss",
                    "--width", 60, "--height", 10)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "loss" in lines[0] and any("val_loss" in line for line in lines[1:])
    assert max(len(line) for line in lines) <= 60
    assert "\x1b[" not in result.stdout


def test_plot_unknown_metric_lists_available(root):
    make_run(root, "20250101-120000-a")
    line = one_error_line(invoke("runs", "plot", "a", "--runs-root", root, "--metric", "los"))
    assert "metric 'los' not found" in line
    assert "loss" in line and "val_loss" in line and "cpu_pct" in line


def test_plot_unknown_stage(root):
    make_run(root, "20250101-120000-a")
    line = one_error_line(invoke("runs", "plot", "a", "--runs-root", root, "--stage", "sft"))
    assert "stage 'sft'" in line and "pretrain" in line


# --- control ----------------------------------------------------------------------------------

def control_commands(paths: RunPaths) -> list[str]:
    return [e["cmd"] for e in read_events(paths.control)]


@pytest.mark.parametrize("command", ["stop", "pause", "resume", "checkpoint"])
def test_control_commands_reach_a_live_run(root, command):
    paths = make_run(root, "20250101-120000-live", state="running")
    result = invoke("runs", command, "live", "--runs-root", root)
    assert result.exit_code == 0, result.output
    assert control_commands(paths) == [command]
    assert f"sent {command}" in result.stdout


@pytest.mark.parametrize("state, pid, expected", [
    ("finished", None, "already finished"), ("stopped", None, "dswb run --resume"),
    ("running", DEAD_PID, "is lost"),
])
def test_control_refuses_a_run_that_is_not_alive(root, state, pid, expected):
    paths = make_run(root, "20250101-120000-x", state=state, pid=pid)
    command = "resume" if state == "stopped" else "stop"
    line = one_error_line(invoke("runs", command, "x", "--runs-root", root))
    assert expected in line
    assert not paths.control.exists()


def fake_engine(paths: RunPaths, on: str, then) -> threading.Thread:
    """Acts like the training process: when `on` appears in control.jsonl, call `then()`."""
    def loop():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if paths.control.exists() and on in control_commands(paths):
                then()
                return
            time.sleep(0.02)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_stop_wait_sees_the_final_state(root):
    paths = make_run(root, "20250101-120000-live", state="running")
    thread = fake_engine(paths, "stop", lambda: set_state(paths, "stopped"))
    result = invoke("runs", "stop", "live", "--runs-root", root, "--wait", 5)
    thread.join()
    assert result.exit_code == 0, result.output
    assert "is stopped" in result.stdout


def test_stop_wait_times_out(root):
    make_run(root, "20250101-120000-live", state="running")
    result = invoke("runs", "stop", "live", "--runs-root", root, "--wait", 0.3)
    assert result.exit_code == 1
    assert "still running after 0.3s" in result.stderr


def test_checkpoint_wait_reports_the_path(root):
    paths = make_run(root, "20250101-120000-live", state="running")

    def write_checkpoint():
        writer = EventWriter(paths.events)
        writer.emit("checkpoint", "pretrain", 7, path="checkpoints/pretrain/step-7", seconds=0.2, reason="request")
        writer.close()

    thread = fake_engine(paths, "checkpoint", write_checkpoint)
    result = invoke("runs", "checkpoint", "live", "--runs-root", root, "--wait", 5)
    thread.join()
    assert result.exit_code == 0, result.output
    assert "checkpoint written: checkpoints/pretrain/step-7 (step 7)" in result.stdout


# --- watch ------------------------------------------------------------------------------------

def test_format_event():
    event = {"t": 0, "kind": "metrics", "stage": "pretrain", "step": 12,
             "metrics": {"loss": 2.34567, "lr": 3e-4, "grad_norm": 0.5, "tokens_per_s": 12345.0,
                         "eta_s": 192.0, "tokens_real": 100, "skipped_steps": 0, "reward": None}}
    line = format_event(event, {"pretrain": 100})
    assert "pretrain" in line and "step 12/100" in line and "metrics" in line
    assert line.endswith("loss=2.346 lr=3.00e-04 gnorm=0.5 tok/s=12.3k eta=3m12s reward=nan")
    alert = format_event({"t": 0, "kind": "alert", "stage": "pretrain", "step": 3, "level": "error",
                          "code": "nonfinite_loss", "message": "loss was NaN"})
    assert alert.endswith("alert       ERROR nonfinite_loss: loss was NaN")
    assert format_event({"kind": "mystery", "stage": None, "step": None, "x": 1}).endswith("mystery     x=1")


def test_format_moe_event():
    event = {"t": 0, "kind": "moe", "stage": "pretrain", "step": 20, "family": "deepseek_v3", "balance": "aux_free",
             "layers": [{"imbalance": 1.25, "dead": [3]}, {"imbalance": 2.5, "dead": []}, "junk"]}
    assert format_event(event).endswith("moe         deepseek_v3 aux_free, 2 layers, max/mean load 1.25 2.5, "
                                        "dead experts 1")
    assert "0 layers" in format_event({"kind": "moe", "stage": "sft", "step": 1, "layers": "bad"})


def test_watch_no_follow_prints_every_event(root):
    paths = make_run(root, "20250101-120000-a", state="running")
    n = len(read_events(paths.events))
    result = invoke("watch", "a", "--runs-root", root, "--no-follow", "--from-start")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == n
    assert "run_start" in lines[0] and "step 1/6" in lines[2] and "loss=4" in lines[2]


def test_watch_kinds_and_last_lines(root):
    make_run(root, "20250101-120000-a", state="running")
    result = invoke("watch", "a", "--runs-root", root, "--no-follow", "-k", "eval", "-k", "alert", "-n", 2)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert " eval " in lines[0] and "step 6/6" in lines[0] and " alert " in lines[1]


def test_watch_exits_after_draining_a_finished_run(root):
    make_run(root, "20250101-120000-a", state="finished")
    result = invoke("watch", "a", "--runs-root", root, "-n", 3)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "run_end" in lines[-2] and lines[-1] == "run 20250101-120000-a finished"


def test_watch_failed_run_exits_1(root):
    make_run(root, "20250101-120000-a", state="failed")
    result = invoke("watch", "a", "--runs-root", root, "-n", 0)
    assert result.exit_code == 1
    assert result.stdout.strip() == "run 20250101-120000-a failed: boom"


def test_watch_follows_until_the_run_ends(root):
    paths = make_run(root, "20250101-120000-a", state="running", losses=[3.0])

    def engine():
        time.sleep(0.2)
        with open(paths.events, "a") as f:  # a torn line, completed a moment later
            f.write('{"t": 1.0, "kind": "log", "stage": "pretrain", "step": 2, "level": "info", ')
            f.flush()
            time.sleep(0.2)
            f.write('"message": "half then whole"}\n')
        writer = EventWriter(paths.events)
        writer.emit("metrics", "pretrain", 2, metrics={"loss": 1.5})
        writer.emit("run_end", None, 2, state="finished", error=None)
        writer.close()
        set_state(paths, "finished")

    thread = threading.Thread(target=engine, daemon=True)
    thread.start()
    t0 = time.monotonic()
    result = invoke("watch", "a", "--runs-root", root, "-n", 0, "--interval", 0.05)
    thread.join()
    assert result.exit_code == 0, result.output
    assert time.monotonic() - t0 < 5
    lines = result.stdout.splitlines()
    assert "half then whole" in lines[0] and "loss=1.5" in lines[1] and "run_end" in lines[2]
    assert lines[-1] == "run 20250101-120000-a finished"


def test_watch_errors(root):
    make_run(root, "20250101-120000-a")
    assert "no run 'zzz'" in one_error_line(invoke("watch", "zzz", "--runs-root", root))
    line = one_error_line(invoke("watch", "a", "--runs-root", root, "-k", "metric"))
    assert "unknown event kind 'metric'" in line


def test_cli_modules_import_no_heavy_libraries():
    code = ("import sys, dswb.cli.runs_cmd, dswb.cli.runs_scan, dswb.cli.runs_plot, dswb.cli.runs_verify,"
            " dswb.cli.runs_control, dswb.cli.watch_cmd, dswb.cli.presets_cmd, dswb.presets;"
            "print(sorted(m for m in ('torch', 'transformers', 'textual', 'plotext', 'psutil') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_watch_ctrl_c_exits_quietly(root, monkeypatch):
    from dswb.cli import watch_cmd

    make_run(root, "20250101-120000-a", state="running")

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(watch_cmd.time, "sleep", interrupt)
    result = invoke("watch", "a", "--runs-root", root, "-n", 1)
    assert result.exit_code == 0 and result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
