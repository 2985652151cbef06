"""`dswb bench sinks`: the CPU time the tracker sinks (`[monitor] report_to`, docs/sinks.md) cost per event,
on the training thread and on the sink thread.

The events are a pure function of their index (`event_stream`): the mix of an RL stage's
events.jsonl, i.e. per 20 steps 20 `metrics` events of 30 numbers (the GRPO stage's names), 5 `system`
samples, one `eval`, one `samples` event of 8 rows, one `log` line, and a `moe` and an `fp8` event.

- Training thread: `EventWriter.emit` to a real `events.jsonl` alone, then the same through `SinkTee`
  with every installed sink live behind a `SinkPump` (as `report_to` runs them), each way twice: every
  event at once (the sink thread busy throughout, the worst case) and paced at `rate` events per second
  (a fast training's rate; the sink thread keeps up, and each emit starts with cold caches, which costs
  more than the sinks do). `time.thread_time` around each `emit` counts this thread's CPU only, so the
  difference between rows is what the sinks cost training: a queue put, plus the GIL and caches the
  sink thread takes. The wall time is reported too: it includes waiting for the GIL.
- Sink thread: each installed sink alone, fed the same events on this thread (as the pump's thread
  does): `open` and `close` wall seconds, and CPU microseconds per event, overall and by kind. A
  tracker's own service process (W&B's `wandb-core`) is measured as the CPU time of this process's
  children over the same writes (psutil), reported apart.

Nothing is sent anywhere: stores live in a temporary directory, W&B runs offline.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

FULL = {"events": 5000, "paced": 1000, "rate": 100.0}
QUICK = {"events": 200, "paced": 50, "rate": 200.0}
PERIOD = 20   # steps per cycle of the mix
RL_METRICS = ("loss", "reward_mean", "reward_std", "kl", "entropy", "clip_ratio", "ratio_max", "grad_norm", "lr",
              "tokens_per_s", "step_time_s", "rollout_s", "update_s", "completion_len", "frac_zero_std",
              "reward/exact", "reward/format", "adv_mean", "adv_std", "value_loss", "policy_loss", "mfu",
              "tokens", "samples_per_s", "truncated_frac", "think_len", "answer_len", "pad_frac", "kl_coef", "epoch")


def event_stream(n: int) -> list[dict]:
    """`n` events in the mix of the module docstring, with values that vary by step."""
    events: list[dict] = []
    step = 0
    while len(events) < n:
        step += 1
        x = (step * 7919) % 1000 / 1000
        events.append({"kind": "metrics", "stage": "grpo", "step": step,
                       "metrics": {name: x + i for i, name in enumerate(RL_METRICS)}})
        if step % 4 == 0:
            events.append({"kind": "system", "stage": "grpo", "step": step,
                           "metrics": {"cpu_pct": 180 + x, "sys_cpu_pct": 95.0, "rss_mb": 1500 + x,
                                       "ram_used_pct": 40.0, "ram_used_mb": 9000.0, "disk_free_gb": 100.0}})
        if step % PERIOD == 0:
            events.append({"kind": "eval", "stage": "grpo", "step": step, "metrics": {"accuracy": x, "val_reward": x}})
            events.append({"kind": "samples", "stage": "grpo", "step": step,
                           "samples": [{"prompt": f"{i}+{step}=", "completion": f"{i + step}", "reward": x}
                                       for i in range(8)]})
            events.append({"kind": "log", "stage": "grpo", "step": step, "level": "info", "message": f"step {step}"})
            events.append({"kind": "moe", "stage": "grpo", "step": step,
                           "layers": [{"layer": j, "tokens": 960, "imbalance": 1.1 + x, "entropy": 0.9,
                                       "gate_mean": 0.5, "dead": 0, "bias": [0.01 * k for k in range(8)]}
                                      for j in range(1, 4)]})
            events.append({"kind": "fp8", "stage": "grpo", "step": step,
                           "layers": {g: {"amax": 3 + x, "saturation_pct": 0.0, "underflow_pct": 0.1}
                                      for g in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")}})
    return events[:n]


def installed_sinks() -> list[str]:
    from dswb.config.load import SINK_LIBRARIES

    return [name for name, module in SINK_LIBRARIES.items() if importlib.util.find_spec(module) is not None]


def children_cpu_s() -> float:
    """CPU seconds of this process's live children (a tracker's service process), 0 without psutil."""
    try:
        import psutil
    except ImportError:
        return 0.0
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def training_thread(events: list[dict], names: list[str], workdir: Path, rate: float, paced: int) -> dict:
    """CPU and wall microseconds per event of the training thread's `emit`: without sinks, with them in a
    burst (every event at once: the sink thread busy throughout), and with them paced at `rate` events
    per second (the first `paced` events; a fast training's rate, the sink thread keeps up). Only the `emit`
    calls are timed."""
    from dswb.engine.telemetry.sinks import SinkPump, SinkTee, make_sinks
    from dswb.rundir.events import EventWriter

    out = {}
    for label, sinks, pause in (("none", [], 0.0), ("burst", names, 0.0), ("none paced", [], 1.0 / rate),
                                ("paced", names, 1.0 / rate)):
        if sinks == [] and label in ("burst", "paced"):
            continue
        run_dir = workdir / f"train-{label.replace(' ', '-')}"
        run_dir.mkdir(parents=True)
        writer = EventWriter(run_dir / "events.jsonl")
        pump = SinkPump(make_sinks(sinks), run_dir, {"run": {"name": "bench"}}) if sinks else None
        emitter = SinkTee(writer, pump) if pump else writer
        if pump:
            pump.flush()   # the sinks' imports and opening are not the training thread's
        cpu = wall = 0.0
        batch = events[:paced] if pause else events
        for e in batch:
            c, w = time.thread_time(), time.perf_counter()
            emitter.emit(e["kind"], e["stage"], e["step"], **{k: v for k, v in e.items()
                                                              if k not in ("kind", "stage", "step")})
            cpu, wall = cpu + time.thread_time() - c, wall + time.perf_counter() - w
            if pause:
                time.sleep(pause)
        out[label] = {"events": len(batch), "cpu_us": 1e6 * cpu / len(batch), "wall_us": 1e6 * wall / len(batch)}
        if pump:
            drain0 = time.perf_counter()
            pump.close()
            out[label].update(drain_s=time.perf_counter() - drain0, dropped=pump.dropped, failed=pump.failed)
        writer.close()
    return out


def sink_thread(events: list[dict], name: str, workdir: Path) -> dict:
    """One sink fed every event on this thread: open/close seconds, CPU microseconds per event (by kind)."""
    from dswb.engine.telemetry.sinks import make_sinks

    run_dir = workdir / f"sink-{name}"
    run_dir.mkdir(parents=True)
    (sink,) = make_sinks([name], continue_run=False)
    t0 = time.perf_counter()
    sink.open(run_dir, {"run": {"name": "bench"}, "monitor": {"report_to": [name]}})
    open_s = time.perf_counter() - t0
    by_kind: dict[str, list[float]] = {}
    service0 = children_cpu_s()
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for e in events:
        c = time.thread_time()
        sink.write(e)
        by_kind.setdefault(e["kind"], []).append(time.thread_time() - c)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    service = children_cpu_s() - service0
    t1 = time.perf_counter()
    sink.close()
    return {"open_s": open_s, "close_s": time.perf_counter() - t1, "cpu_us": 1e6 * cpu / len(events),
            "wall_us": 1e6 * wall / len(events), "service_cpu_us": 1e6 * service / len(events),
            "by_kind_us": {k: 1e6 * statistics.fmean(v) for k, v in sorted(by_kind.items())}, "where": sink.where}


def run(quick: bool = False, names: list[str] | None = None) -> dict:
    settings = QUICK if quick else FULL
    names = installed_sinks() if names is None else names
    events = event_stream(settings["events"])
    mix: dict[str, int] = {}
    for e in events:
        mix[e["kind"]] = mix.get(e["kind"], 0) + 1
    with tempfile.TemporaryDirectory(prefix="dswb-bench-sinks-") as tmp:
        work = Path(tmp)
        saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR",
                                                "WANDB_DATA_DIR", "WANDB_SILENT")}
        os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(work), WANDB_CONFIG_DIR=str(work / "wandb-config"),
                          WANDB_CACHE_DIR=str(work / "wandb-cache"), WANDB_DATA_DIR=str(work / "wandb-data"),
                          WANDB_SILENT="true")
        try:
            sinks = {name: sink_thread(events, name, work) for name in names}
            train = training_thread(events, names, work, settings["rate"], settings["paced"])
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return {"events": len(events), "mix": mix, "sinks_installed": names, "rate": settings["rate"],
            "training_thread": train, "sinks": sinks}


def format_table(result: dict) -> str:
    mix = ", ".join(f"{k} {v}" for k, v in result["mix"].items())
    lines = [f"tracker sinks: {result['events']} events ({mix})", "",
             f"training thread, per event (sinks: {', '.join(result['sinks_installed']) or 'none installed'})",
             "                                    CPU µs   wall µs   drain s  dropped"]
    rate = f"{result.get('rate', 0):g} events/s"   # the first events, at that rate
    what = {"none": "events.jsonl only, at once", "burst": "+ sinks, at once",
            "none paced": f"events.jsonl only, {rate}", "paced": f"+ sinks, {rate}"}
    for label, row in result["training_thread"].items():
        tail = f"  {row['drain_s']:8.2f}  {row['dropped']:7d}" if "drain_s" in row else ""
        lines.append(f"  {what[label]:<32s} {row['cpu_us']:7.1f}  {row['wall_us']:8.1f}{tail}")
    lines += ["", "sink thread, per event     open s  close s   CPU µs  wall µs  service µs   by kind (CPU µs)"]
    for name, row in result["sinks"].items():
        kinds = " ".join(f"{k} {v:.0f}" for k, v in row["by_kind_us"].items())
        lines.append(f"  {name:<22s} {row['open_s']:7.2f}  {row['close_s']:7.2f}  {row['cpu_us']:7.1f}  "
                     f"{row['wall_us']:7.1f}  {row['service_cpu_us']:10.1f}   {kinds}")
    return "\n".join(lines)
