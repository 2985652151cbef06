"""Deterministic synthetic run directories: the recorded fixtures and the benchmark's input.

`RunSpec` describes a run (stages, steps, RL metrics, FP8 and MoE events, failure); `run_events(spec)`
returns every event such a run writes (docs/run-directory.md), `write_run(root, spec, upto)`
writes a run directory holding the first `upto` of them with a matching `status.json`.
Same spec, same bytes: no clocks, no randomness beyond a seeded generator. Standard library.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from dswb.rundir import RunPaths, create_run_dir, write_status
from dswb.tui import synthetic_rl
from dswb.util.atomic import write_json_atomic

FIXED_T0 = 1_735_732_800.0  # 2025-01-01 12:00:00 UTC
FIXTURE_HOST = "fixture-host"  # not this machine: viewers show the state the run claims


@dataclass
class RunSpec:
    """What a synthetic run looks like."""

    run_id: str
    stages: list[tuple[str, int]] = field(default_factory=lambda: [("pretrain", 300)])
    t0: float = FIXED_T0
    seed: int = 0
    step_s: float = 0.5
    eval_every: int = 50
    system_every: int = 20
    checkpoint_every: int = 100
    rl: bool = False  # RL stages log reward / kl / entropy / clip_frac
    fp8_every: int = 0  # > 0: an `fp8` event every N steps
    moe_every: int = 0  # > 0: a `moe` event (routing of a DeepSeek-V3-like model) every N steps
    fail_at: int | None = None  # the loss turns non-finite at this step and the run fails
    gpu: bool = False
    posttrain: bool = False  # stages log what the post-training contract names (`synthetic_rl`)
    samples_every: int = 10  # with posttrain: a `samples` event every N iterations of PPO/GRPO
    reasoning: bool = False  # with posttrain: PPO/GRPO completions think first (`<think>...</think>answer`)
    disk: bool = False  # system events carry disk_free_gb
    pid: int = 4242
    host: str = FIXTURE_HOST


RL_STAGES = ("grpo", "ppo")
FP8_GROUPS = ("attn.qkv", "attn.out", "mlp.up", "mlp.down", "lm_head")


def _metrics(spec: RunSpec, stage: str, step: int, total: int, rng: random.Random) -> dict:
    frac = step / max(total, 1)
    noise = rng.gauss(0.0, 0.04)
    loss = 0.9 + 6.0 * math.exp(-4.0 * frac) + noise
    if spec.fail_at is not None and step >= spec.fail_at:
        loss = None
    warm = min(1.0, step / max(1, total // 10))
    lr = 3e-4 * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    tokens_padded = 8192
    pad_eff = 0.82 + 0.1 * math.sin(step / 7.0) * 0.5 + rng.uniform(-0.02, 0.02)
    tokens_real = int(tokens_padded * pad_eff)
    step_time = spec.step_s * (1 + rng.uniform(-0.05, 0.05))
    metrics = {
        "loss": None if loss is None else round(loss, 5),
        "lr": round(lr, 9),
        "grad_norm": round(1.5 * math.exp(-2 * frac) + 0.3 + abs(rng.gauss(0, 0.05)), 5),
        "tokens_per_s": round(tokens_real / step_time, 1),
        "step_time_s": round(step_time, 4),
        "data_wait_s": round(abs(rng.gauss(0.002, 0.001)), 5),
        "pad_efficiency": round(pad_eff, 4),
        "tokens_real": tokens_real,
        "tokens_padded": tokens_padded,
        "batch_size": 32,
        "seq_len": 256,
        "eta_s": round((total - step) * spec.step_s, 1),
        "skipped_steps": 0,
    }
    if spec.rl and stage in RL_STAGES:
        metrics.update({
            "reward": round(0.2 + 0.6 * (1 - math.exp(-3 * frac)) + rng.gauss(0, 0.03), 4),
            "kl": round(0.02 * frac + abs(rng.gauss(0, 0.002)), 5),
            "entropy": round(2.5 - 1.2 * frac + rng.gauss(0, 0.02), 4),
            "clip_frac": round(max(0.0, 0.15 - 0.1 * frac + rng.gauss(0, 0.01)), 4),
        })
    return metrics


def _system(spec: RunSpec, step: int, rng: random.Random) -> dict:
    metrics = {"cpu_pct": round(180 + rng.uniform(-10, 10), 1), "rss_mb": round(900 + step * 0.1, 1),
               "ram_used_pct": round(41 + rng.uniform(-1, 1), 1), "ram_used_mb": round(9800 + step * 0.2, 1)}
    if spec.disk:
        metrics["disk_free_gb"] = round(182.4 - step * 0.01, 2)
    if spec.gpu:
        metrics.update({"gpu_util_pct": round(92 + rng.uniform(-4, 4), 1), "gpu_mem_used_mb": 61234.0,
                        "gpu_mem_total_mb": 81559.0, "gpu_temp_c": 67.0, "cuda_peak_mb": 58012.0})
    return metrics


def _fp8(step: int, rng: random.Random) -> dict:
    layers = {}
    for i, group in enumerate(FP8_GROUPS):
        layers[group] = {"amax": round(2.0 + i * 3.5 + rng.uniform(0, 0.5) + step * 0.001, 4),
                         "saturation_pct": round(max(0.0, (0.4 if group == "lm_head" else 0.01) + rng.gauss(0, 0.01)), 4),
                         "underflow_pct": round(0.5 + i * 0.3 + rng.uniform(0, 0.1), 4)}
    return layers


MOE_EXPERTS, MOE_TOP_K, MOE_LAYERS = 8, 2, (1, 2, 3)  # a moe-tiny-like model: layer 0 dense, 8 routed experts
MOE_DEAD = (3, 5)  # (layer, expert) that stops receiving tokens a third of the way through a stage
MOE_HOT = (2, 6)  # (layer, expert) that stays popular


def _moe(step: int, total: int, steps: int, tokens: int, skew: list[list[float]]) -> dict:
    """A `moe` event's fields: loads that even out as the aux-free bias learns, one expert dying."""
    frac = step / max(total, 1)
    spread = 1.6 * math.exp(-3.0 * frac) + 0.15
    routed = tokens * steps
    layers = []
    for i, layer in enumerate(MOE_LAYERS):
        weights = [max(0.02, 1.0 + spread * s) for s in skew[i]]
        if layer == MOE_HOT[0]:
            weights[MOE_HOT[1]] += 1.2
        dead = [MOE_DEAD[1]] if layer == MOE_DEAD[0] and frac >= 1 / 3 else []
        for expert in dead:
            weights[expert] = 0.0
        total_w = sum(weights)
        load = [int(routed * MOE_TOP_K * w / total_w) for w in weights]
        load[0] += routed * MOE_TOP_K - sum(load)
        mean = sum(load) / MOE_EXPERTS
        probs = [w / total_w for w in weights]
        entropy = -sum(p * math.log(p) for p in probs if p > 0) * (0.93 + 0.04 * frac)
        layers.append({"layer": layer, "tokens": routed, "load": load, "imbalance": round(max(load) / mean, 4),
                       "entropy": round(entropy, 4), "entropy_max": round(math.log(MOE_EXPERTS), 4),
                       "gate_mean": round(0.5 + 0.1 * math.exp(-2 * frac), 4), "dead": dead,
                       "bias": [round(-0.02 * spread * s, 5) for s in skew[i]]})
    return {"family": "deepseek_v3", "balance": "aux_free", "experts": MOE_EXPERTS, "top_k": MOE_TOP_K,
            "steps": steps, "layers": layers}


def _moe_metrics(moe: dict) -> dict:
    """The scalar `moe/*` metrics of the steps a `moe` event covers."""
    layers = moe["layers"]
    return {"moe/imbalance": max(layer["imbalance"] for layer in layers),
            "moe/entropy": round(sum(layer["entropy"] / layer["entropy_max"] for layer in layers) / len(layers), 4),
            "moe/dead": sum(len(layer["dead"]) for layer in layers),
            "moe/bias_abs": round(sum(abs(b) for layer in layers for b in layer["bias"])
                                  / sum(len(layer["bias"]) for layer in layers), 6)}


def run_events(spec: RunSpec) -> list[dict]:
    """Every event of the run, in order, with deterministic timestamps."""
    rng = random.Random(spec.seed)
    moe_rng = random.Random(spec.seed + 1)  # its own stream: runs without MoE keep their bytes
    moe_skew = [[moe_rng.gauss(0.0, 0.6) for _ in range(MOE_EXPERTS)] for _ in MOE_LAYERS]
    t = spec.t0
    events: list[dict] = []

    def emit(kind: str, stage: str | None, step: int, **fields) -> None:
        events.append({"t": round(t, 3), "kind": kind, "stage": stage, "step": step, **fields})

    config = {"run": {"name": spec.run_id.split("-", 2)[-1], "stages": [s for s, _ in spec.stages]}}
    emit("run_start", None, 0, run_id=spec.run_id, config=config, argv=["dswb", "run"], resumed=False)
    emit("log", None, 0, level="info", message=f"run {spec.run_id} starting on cpu")
    failed = False
    for stage, total in spec.stages:
        emit("stage_start", stage, 0, total_steps=total,
             model={"params": 1_312_768, "layers": 4, "hidden": 128, "vocab": 2048},
             data={"train_samples": 9000, "val_samples": 500, "train_tokens": 2_304_000})
        edges = [16 * i for i in range(17)]
        counts = [0, 3, 40, 180, 420, 760, 1100, 1400, 1500, 1300, 1000, 700, 380, 150, 50, 17, 0]
        emit("batching", stage, 0, hist={"edges": edges, "counts": counts[:16]},
             metrics={"samples": 9000, "mean_len": 121.4, "max_len": 250, "truncated": 3, "rejected": 0})
        emit("log", stage, 0, level="info", message=f"[{stage}] {total} steps, batching bucket, max_tokens 8192")
        for step in range(1, total + 1):
            t += spec.step_s
            reasoning = spec.posttrain and spec.reasoning and stage in synthetic_rl.RL_STAGES
            if spec.posttrain and stage in synthetic_rl.RL_STAGES:
                metrics = synthetic_rl.rl_metrics(stage, step, total, rng)
                if reasoning:
                    metrics.pop("rewards/exact_match/mean")
                    metrics.update(synthetic_rl.reasoning_metrics(step, total, rng))
            elif spec.posttrain and stage == "rm":
                metrics = synthetic_rl.rm_metrics(step, total, rng)
            else:
                metrics = _metrics(spec, stage, step, total, rng)
            moe = None
            if spec.moe_every and step % spec.moe_every == 0:
                moe = _moe(step, total, spec.moe_every, metrics.get("tokens_real") or 0, moe_skew)
                metrics.update(_moe_metrics(moe))
            emit("metrics", stage, step, metrics=metrics)
            if moe is not None:
                emit("moe", stage, step, **moe)
                if moe["layers"][MOE_DEAD[0] - 1]["dead"] and step - spec.moe_every < total / 3:
                    emit("alert", stage, step, level="warning", code="moe_dead_experts",
                         message=f"layer {MOE_DEAD[0]}: expert {MOE_DEAD[1]} received no token",
                         explain="A dead expert wastes its parameters; the aux-free bias (moe.bias_update_speed) "
                                 "or an auxiliary loss (moe.balance) should bring tokens back to it.")
            if spec.posttrain and stage in synthetic_rl.RL_STAGES and step % spec.samples_every == 0:
                rows = synthetic_rl.reasoning_samples(step, rng) if reasoning else synthetic_rl.samples(step, rng)
                emit("samples", stage, step, samples=rows)
            if reasoning and step == synthetic_rl.unscorable_steps(total)[0]:
                code, message, explain = synthetic_rl.REASONING_ALERT
                emit("alert", stage, step, level="warning", code=code, message=message.format(step=step),
                     explain=explain)
            if spec.posttrain and step == total // 2 and stage in synthetic_rl.ALERTS:
                code, message, explain = synthetic_rl.ALERTS[stage]
                emit("alert", stage, step, level="warning", code=code, message=message.format(step=step),
                     explain=explain)
            if spec.system_every and step % spec.system_every == 0:
                emit("system", stage, step, metrics=_system(spec, step, rng))
            if spec.fp8_every and step % spec.fp8_every == 0:
                emit("fp8", stage, step, layers=_fp8(step, rng))
            if step == total // 3 and spec.fail_at is None and not (spec.posttrain and stage not in ("pretrain", "sft")):
                emit("alert", stage, step, level="warning", code="loss_spike",
                     message=f"loss jumped 2.1x its EMA at step {step}",
                     explain="A sudden loss spike often means the learning rate is too high for this "
                             "batch size; if it repeats, lower train.lr or raise warmup_steps.")
            if spec.fail_at is not None and step >= spec.fail_at:
                if step == spec.fail_at + 2:
                    emit("alert", stage, step, level="error", code="nonfinite_loss",
                         message="loss was not finite for 3 steps in a row",
                         explain="The loss became NaN/Inf; the run stops after train.max_bad_steps bad "
                                 "steps. Lower train.lr, enable clip_grad, or check the data for empty samples.")
                    emit("log", stage, step, level="error", message="training failed: non-finite loss")
                    emit("stage_end", stage, step, state="failed")
                    emit("run_end", None, step, state="failed",
                         error=f"loss was not finite for 3 steps in a row at step {step} (stage {stage})")
                    failed = True
                    break
                continue
            if spec.posttrain and spec.eval_every and (step % spec.eval_every == 0 or step == total):
                emit("eval", stage, step, metrics=synthetic_rl.eval_metrics(stage, step, total, step == total))
            elif spec.eval_every and (step % spec.eval_every == 0 or step == total):
                frac = step / total
                emit("eval", stage, step, metrics={"val_loss": round(1.0 + 5.5 * math.exp(-3.5 * frac), 4),
                                                   "val_ppl": round(math.exp(1.0 + 5.5 * math.exp(-3.5 * frac)), 3),
                                                   "task_acc": round(min(1.0, 0.9 * frac ** 1.5), 4)})
            if spec.checkpoint_every and (step % spec.checkpoint_every == 0 or step == total):
                emit("checkpoint", stage, step, path=f"checkpoints/{stage}/step-{step}", seconds=0.42,
                     reason="final" if step == total else "periodic")
            if step % 100 == 0:
                emit("log", stage, step, level="info",
                     message=f"[{stage}] step {step}/{total} loss {metrics['loss']:.4f}")
        if failed:
            break
        emit("stage_end", stage, total, state="finished", final_path=f"final/{stage}")
    if not failed:
        emit("log", None, spec.stages[-1][1], level="info", message="run finished")
        emit("run_end", None, spec.stages[-1][1], state="finished", error=None)
    return events


def status_for(spec: RunSpec, events: list[dict]) -> dict:
    """The `status.json` a run would have written after `events`."""
    stage, step, total, last, eta, state, error = spec.stages[0][0], 0, spec.stages[0][1], {}, None, "running", None
    started = events[0]["t"] if events else spec.t0
    for event in events:
        kind = event["kind"]
        if kind == "stage_start":
            stage, total, step = event["stage"], event["total_steps"], 0
        elif kind == "metrics":
            step, last = event["step"], event["metrics"]
            eta = last.get("eta_s")
        elif kind == "run_end":
            state, error = event["state"], event.get("error")
    return {"state": state, "pid": spec.pid, "host": spec.host, "run_id": spec.run_id, "stage": stage,
            "stages": [s for s, _ in spec.stages], "step": step, "total_steps": total,
            "started": started, "updated": events[-1]["t"] if events else spec.t0, "error": error,
            "eta_s": eta if state == "running" else None, "last_metrics": last}


def event_line(event: dict) -> str:
    return json.dumps(event, allow_nan=False) + "\n"


def write_status_fixed(paths: RunPaths, status: dict) -> None:
    """Like `write_status` (atomic) but keeps the given `updated` so fixtures are reproducible."""
    write_status(paths.status, status)
    data = json.loads(paths.status.read_text())
    data["updated"] = status["updated"]
    write_json_atomic(paths.status, data, fsync=False, tmp_name=".status.fixed.tmp", indent=1)


def write_run(root: Path, spec: RunSpec, upto: int | None = None) -> RunPaths:
    """Write the run directory `root/<run_id>` with the first `upto` events (all by default)."""
    events = run_events(spec)
    if upto is not None:
        events = events[:upto]
    paths = create_run_dir(Path(root) / spec.run_id)
    paths.config.write_text(f'[run]\nname = "{spec.run_id.split("-", 2)[-1]}"\n'
                            f'stages = {json.dumps([s for s, _ in spec.stages])}\n')
    with open(paths.events, "w", encoding="utf-8") as f:
        for event in events:
            f.write(event_line(event))
    with open(paths.log, "w", encoding="utf-8") as f:
        for event in events:
            if event["kind"] in ("log", "alert"):
                text = event.get("message")
                f.write(f"{event['level'].upper():7s} {text}\n")
    write_status_fixed(paths, status_for(spec, events))
    return paths


def write_big_events(path: Path, n_events: int, seed: int = 0) -> None:
    """An events file of `n_events` metrics events (one stage), for the benchmarks."""
    spec = RunSpec(run_id="bench", stages=[("pretrain", n_events)], seed=seed)
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write(event_line({"t": spec.t0, "kind": "stage_start", "stage": "pretrain", "step": 0,
                            "total_steps": n_events, "model": {}, "data": {}}))
        buf = []
        for step in range(1, n_events + 1):
            event = {"t": spec.t0 + step * 0.5, "kind": "metrics", "stage": "pretrain", "step": step,
                     "metrics": _metrics(spec, "pretrain", step, n_events, rng)}
            buf.append(json.dumps(event))
            if len(buf) >= 10_000:
                f.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            f.write("\n".join(buf) + "\n")


# The recorded fixtures under tests/fixtures/runs (regenerate: python tests/fixtures/make_fixtures.py).
FIXTURE_SPECS = {
    "finished": RunSpec("20250101-120000-finished"),
    "live": RunSpec("20250101-130000-live", t0=FIXED_T0 + 3600, seed=1),
    "failed": RunSpec("20250101-140000-failed", t0=FIXED_T0 + 7200, seed=2, fail_at=120),
    "rl": RunSpec("20250101-150000-rl", stages=[("sft", 100), ("grpo", 200)], t0=FIXED_T0 + 10800,
                  seed=3, rl=True, gpu=True),
    "fp8": RunSpec("20250101-160000-fp8", stages=[("pretrain", 200)], t0=FIXED_T0 + 14400, seed=4,
                   fp8_every=10, gpu=True),
    # A post-training pipeline (issue 6): pretrain -> SFT -> reward model -> PPO -> GRPO.
    "pipeline": RunSpec("20250101-170000-pipeline", stages=[("pretrain", 120), ("sft", 60), ("rm", 40), ("ppo", 60),
                                                           ("grpo", 60)],
                        t0=FIXED_T0 + 18000, seed=5, step_s=0.2, eval_every=20, system_every=15, checkpoint_every=60,
                        posttrain=True, disk=True),
}
LIVE_FRACTION = 0.5  # the live fixture holds this share of its events; a test replays the rest


def live_split(spec: RunSpec = FIXTURE_SPECS["live"]) -> int:
    return int(len(run_events(spec)) * LIVE_FRACTION)


def write_fixtures(runs_root: Path) -> list[RunPaths]:
    """Write every fixture run under `runs_root` (the live one half-way through)."""
    written = []
    for key, spec in FIXTURE_SPECS.items():
        written.append(write_run(runs_root, spec, upto=live_split(spec) if key == "live" else None))
    return written
