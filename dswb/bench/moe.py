"""`dswb bench moe`: does auxiliary-loss-free balancing balance `moe-tiny` as well as an auxiliary loss, at
no cost in validation loss?

The same pretraining (`moe-tiny`, the built-in three-digit addition task, same data, same steps) runs with
each balancing (`VARIANTS`: none, the Switch-style auxiliary loss, and DeepSeek-V3's bias at several
update speeds gamma) for each seed. Per run: the max/mean expert load of every MoE layer over the last
`LAST` steps (summed from their `moe` events), the final validation loss, and the time the router
hooks took per step against the step time (their cost at `stats_every = 1`). Runs are in this process,
one after another, each in its own run directory under a temporary root.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

STEPS, QUICK_STEPS = 400, 20
LAST = 20       # steps whose loads make the final max/mean load
SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
BASE = ["model.size=moe-tiny", "model.max_seq_len=32", "data.source=task", "task.digits=3", "task.n_train=20000",
        "task.n_val=500", "task.n_test=100", "task.seed=0", "batching.max_tokens=1024", "train.lr=3e-3",
        "train.warmup_steps=20", "train.weight_decay=0.0", "eval.every=0", "eval.max_batches=8",
        "eval.task_samples=0", "checkpoint.every=0", "checkpoint.keep_last=1", "monitor.log_every=1",
        "monitor.system_every_s=5", "moe.stats_every=1", "moe.dead_after=50", "run.threads=1"]
# name -> overrides
VARIANTS = {
    "none": ["moe.balance=none"],
    "aux_loss 0.01": ["moe.balance=aux_loss", "moe.aux_loss_coef=0.01"],
    "aux_free 0.001": ["moe.balance=aux_free", "moe.bias_update_speed=0.001"],
    "aux_free 0.01": ["moe.balance=aux_free", "moe.bias_update_speed=0.01"],
    "aux_free 0.02": ["moe.balance=aux_free", "moe.bias_update_speed=0.02"],
    "aux_free 0.05": ["moe.balance=aux_free", "moe.bias_update_speed=0.05"],
}


def one_run(root: Path, name: str, seed: int, steps: int) -> dict:
    from dswb.config import load_config
    from dswb.engine.runner import run_training
    from dswb.engine.moe.stats import imbalance
    from dswb.rundir import create_run_dir, read_events

    overrides = BASE + VARIANTS[name] + [f"train.steps={steps}", f"run.seed={seed}",
                                         f"data.cache_dir={root / 'cache'}"]
    run_dir = root / f"{name.replace(' ', '-')}-{seed}"
    started = time.perf_counter()
    code = run_training(load_config(None, overrides), create_run_dir(run_dir))
    if code != 0:
        raise RuntimeError(f"bench moe: the {name} run (seed {seed}) ended with exit code {code}")
    events = read_events(run_dir / "events.jsonl", ("moe", "metrics", "eval"))
    moe = [e for e in events if e["kind"] == "moe"]
    last = moe[-min(LAST, len(moe)):]
    loads = [[sum(e["layers"][i]["load"][x] for e in last) for x in range(len(last[0]["layers"][i]["load"]))]
             for i in range(len(last[0]["layers"]))]
    evals = [e for e in events if e["kind"] == "eval" and "val_loss" in e.get("metrics", {})]
    metrics = [e["metrics"] for e in events if e["kind"] == "metrics"]
    metrics = metrics[len(metrics) // 10:]    # after the first steps' warm-up
    step_s = statistics.median(m["step_time_s"] for m in metrics)
    hook_ms = statistics.median(m["moe/hook_ms"] for m in metrics if "moe/hook_ms" in m)
    return {"imbalance": [imbalance(load) for load in loads],
            "dead": sum(len(x["dead"]) for x in moe[-1]["layers"]),
            "val_loss": evals[-1]["metrics"]["val_loss"], "step_s": step_s, "hook_ms": hook_ms,
            "hook_share": hook_ms / 1000.0 / step_s, "wall_s": time.perf_counter() - started}


def run(quick: bool = False, trials: int | None = None) -> dict:
    """`trials`: seeds per variant (default 3; 1 with --quick)."""
    steps = QUICK_STEPS if quick else STEPS
    seeds = tuple(range(trials)) if trials else (QUICK_SEEDS if quick else SEEDS)
    variants = ["none", "aux_loss 0.01", "aux_free 0.01"] if quick else list(VARIANTS)
    out: dict = {"steps": steps, "seeds": list(seeds), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="dswb-bench-moe-") as tmp:
        for name in variants:
            runs = [one_run(Path(tmp), name, seed, steps) for seed in seeds]
            out["variants"][name] = {
                "runs": runs,
                "max_imbalance": statistics.mean(max(r["imbalance"]) for r in runs),
                "mean_imbalance": statistics.mean(statistics.mean(r["imbalance"]) for r in runs),
                "val_loss": statistics.mean(r["val_loss"] for r in runs),
                "hook_share": statistics.median(r["hook_share"] for r in runs),
            }
    return out


def format_table(result: dict) -> str:
    lines = [f"moe-tiny (DeepSeek-V3 layout, 3 MoE layers x 8 routed experts, top-2), pretraining {result['steps']} "
             f"steps on three-digit sums, seeds {result['seeds']}; max/mean expert load over the last {LAST} steps "
             f"(1.0 = balanced, 4.0 = every token on 2 experts)", "",
             f"  {'balance':16s} {'worst layer':>11s} {'mean layer':>10s} {'val loss':>9s} {'hooks/step':>10s}   "
             f"per seed: worst layer, val loss"]
    for name, v in result["variants"].items():
        seeds = "  ".join(f"{max(r['imbalance']):.2f} {r['val_loss']:.4f}" for r in v["runs"])
        lines.append(f"  {name:16s} {v['max_imbalance']:11.2f} {v['mean_imbalance']:10.2f} {v['val_loss']:9.4f} "
                     f"{100 * v['hook_share']:9.2f}%   {seeds}")
    lines += ["", "  hooks/step: time inside the router hooks (counting, statistics, router losses) per training step, "
                  "median over steps, at moe.stats_every = 1"]
    return "\n".join(lines)
