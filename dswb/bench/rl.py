"""`dswb bench rl`: where an RL iteration goes, for GRPO and PPO on the built-in task.

Runs the real stages (`dswb.engine.stages.grpo` / `ppo` through `run_training`) for a few
iterations from a start model and reads their own timing metrics: time per iteration split into
generation, scoring, reference/old log-probs and update, and completion tokens/s of the sampler.
The settings are those of TRL's measurement in issue 6 (16 prompts x 8 completions, lr 5e-5 with
10 warmup steps, beta 0, the `dapo` loss): TRL 1.16 took 0.135 s per iteration there, generation
29% of it, 12.9k completion tokens/s (2 CPU cores, fp32). The start model is `--init DIR` (a causal
LM trained on the task), else one is trained here first (presets/rl-start.toml, about a minute;
with --quick a 60-step pretraining only). The first iterations (warm-up) are left out of the medians.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

TRL_REFERENCE = {"grpo": {"iteration_s": 0.135, "generation_share": 0.29, "completion_tokens_per_s": 12_900}}
PHASES = ("generation", "scoring", "ref_logprobs", "update")
WARMUP = 3


def _start_model(workdir: Path, quick: bool) -> Path:
    from dswb.config import load_config
    from dswb.engine.runner import run_training
    from dswb.presets import find_preset
    from dswb.rundir import create_run_dir

    overrides = ["checkpoint.every=0"] + (['run.stages=["pretrain"]', "train.steps=60", "eval.every=0"] if quick else [])
    config = load_config(find_preset("rl-start"), overrides)
    paths = create_run_dir(workdir / "start")
    if run_training(config, paths) != 0:
        raise RuntimeError(f"the start model could not be trained (see {paths.log})")
    return paths.final(config.run.stages[-1])


def _stage_run(stage: str, init: Path, workdir: Path, iterations: int) -> dict:
    from dswb.config import load_config
    from dswb.engine.runner import run_training
    from dswb.rundir import create_run_dir
    from dswb.rundir.events import read_events

    common = [f'run.stages=["{stage}"]', f'{stage}.init="{init}"', f"{stage}.steps={iterations}",
              f"{stage}.lr=5e-5", f"{stage}.warmup_steps=10", f"{stage}.prompts_per_step=16",
              f"{stage}.max_new_tokens=4", f'{stage}.rewards=["exact_match"]', f"{stage}.samples_every=0",
              "eval.every=0", "eval.task_samples=0", "checkpoint.every=0", "task.n_test=1"]
    if stage == "grpo":
        common += ["grpo.group_size=8", "grpo.beta=0.0", 'grpo.loss_type="dapo"']
    config = load_config(None, common)
    paths = create_run_dir(workdir / stage)
    started = time.perf_counter()
    if run_training(config, paths) != 0:
        raise RuntimeError(f"the {stage} run failed (see {paths.log})")
    wall = time.perf_counter() - started
    rows = [e["metrics"] for e in read_events(paths.events, ("metrics",)) if e.get("stage") == stage][WARMUP:]
    med = lambda key: statistics.median(float(r[key]) for r in rows)  # noqa: E731
    iteration = med("step_time_s")
    phases = {p: med(f"timing/{p}_s") for p in PHASES}
    return {"iterations": len(rows), "iteration_s": iteration, "phases_s": phases,
            "phase_shares": {p: s / iteration for p, s in phases.items()},
            "completion_tokens_per_s": med("completion_tokens_per_s"), "completions": 16 * (8 if stage == "grpo" else 1),
            "wall_s": wall}


def run(quick: bool = False, init: str | None = None) -> dict:
    import torch

    from dswb.engine.model.device import select_device

    iterations = 12 if quick else 40
    with tempfile.TemporaryDirectory(prefix="dswb-bench-rl-") as tmp:
        workdir = Path(tmp)
        start = Path(init) if init else _start_model(workdir, quick)
        result = {"device": str(select_device("auto")), "threads": torch.get_num_threads(), "init": str(start),
                  "quick": quick, "trl": TRL_REFERENCE}
        for stage in ("grpo", "ppo"):
            result[stage] = _stage_run(stage, start, workdir, iterations)
    return result


def format_table(result: dict) -> str:
    lines = [f"device: {result['device']} ({result['threads']} threads); start model {result['init']}",
             "median time per iteration after warm-up, split by phase (share of the iteration)", ""]
    head = f"  {'stage':6s} {'completions':>11s} {'iteration':>10s}  " + "  ".join(f"{p:>18s}" for p in PHASES) + \
           f"  {'completion tok/s':>16s}"
    lines.append(head)
    for stage in ("grpo", "ppo"):
        r = result[stage]
        phases = "  ".join(f"{r['phases_s'][p]:8.4f}s ({100 * r['phase_shares'][p]:4.1f}%)" for p in PHASES)
        lines.append(f"  {stage:6s} {r['completions']:>11d} {r['iteration_s']:9.4f}s  {phases}  "
                     f"{r['completion_tokens_per_s']:16,.0f}")
    trl = result["trl"]["grpo"]
    lines += ["", f"  for reference, TRL 1.16 GRPOTrainer in issue 6 (same settings, another start model, 2 CPU cores): "
                  f"{trl['iteration_s']:.3f} s per iteration, generation {100 * trl['generation_share']:.0f}%, "
                  f"{trl['completion_tokens_per_s']:,} completion tokens/s",
              "  (an iteration's cost depends on the start model: GRPO skips zero-advantage rows; for a same-start, "
              "same-machine comparison run `dswb bench grpo-vs-trl`)"]
    return "\n".join(lines)
