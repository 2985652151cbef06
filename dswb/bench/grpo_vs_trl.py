"""`dswb bench grpo-vs-trl`: dswb's GRPO against TRL's `GRPOTrainer` in the same time budget.

The comparison of issue 6, made runnable: from the same start model (`--init DIR`, else
presets/rl-start.toml trained here), both train with the same settings for the same seconds of
training (120 s, `--quick`: 30 s), one seed after the other (`--trials`, default 3), and are scored
by the same greedy exact match on the task's 500 held-out test sums:
16 prompts x 8 completions, lr 5e-5 with 10 warmup steps, beta 0, the `dapo` loss, temperature 1,
4 new tokens (3 digits and eos), a 0/1 exact-match reward, fp32 on the CPU, no activation
checkpointing on either side (TRL 1.x turns it on by default: its side here turns it off).
`--task reasoning`: presets/reasoning.toml's task and GRPO (three-digit worked sums, 40 new tokens,
`format` + `exact_match` rewards; TRL gets the same rules as functions), from the preset's cold
start.

Both sides train on the same prompts whatever the seed: the task's split of seed 0 (the start
model's), which dswb reads from a prompt file (`grpo.data`), and both are scored on that split's
test sums: dswb's side holds `task.seed = 0`, which its final model records and the scoring reads
(without it, the split follows `run.seed`, and a seed-1 model would be scored on other sums, most of
them in the seed-0 training split). A seed changes the prompt order and the sampling only.

TRL is an optional extra: `pip install "trl==1.16.0"` in the environment that runs the bench
(without it, only dswb's side runs). TRL's time is its training loop's wall time (from the start of
training to the end of its last step); dswb's is the `max_seconds` limit of the stage (training
steps only): both exclude the set-up and the final evaluation.

Shared with `dswb bench lora`: running a dswb stage and reading its result (`train_stage`), the
task's files (`task_files`), TRL's time limit and scoring (`time_limit`, `trl_result`), the tables.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

THREADS = 1   # torch threads of both sides: tiny models gain nothing from a second thread (see the README)
SETTINGS = {"prompts_per_step": 16, "group_size": 8, "lr": 5e-5, "warmup_steps": 10, "max_new_tokens": 4}


@dataclass(frozen=True)
class BenchTask:
    """A task both sides train on: the built-in task's shape, the GRPO settings and the rewards."""

    name: str
    digits: int = 2
    think: bool = False
    n_train: int = 9000
    settings: dict = field(default_factory=lambda: dict(SETTINGS))
    rewards: tuple[str, ...] = ("exact_match",)     # dswb's sources; TRL gets the same rules as functions

    def overrides(self) -> list[str]:
        """dswb's settings for this task: the split of seed 0, recorded in the final model for scoring."""
        return ["task.seed=0", f"task.digits={self.digits}", f"task.think={str(self.think).lower()}",
                f"task.n_train={self.n_train}", f"grpo.rewards={list(self.rewards)}".replace("'", '"')]


ADDITION = BenchTask("addition")
REASONING = BenchTask("reasoning", digits=3, think=True, n_train=20000, rewards=("format", "exact_match"),
                      settings={**SETTINGS, "max_new_tokens": 40})   # presets/reasoning.toml's GRPO
TASKS = {t.name: t for t in (ADDITION, REASONING)}


DSWB_VARIANTS = {
    "dswb": [],                                            # TRL's settings exactly
}


class StepClock:
    """A run's reporter (`dswb.engine.telemetry.monitor.Reporter`) that takes the process's CPU seconds
    from the start of the stage to its last step: on a shared machine a steadier measure than wall time."""

    def __init__(self) -> None:
        self.started = time.process_time()
        self.cpu_s = 0.0

    def on_event(self, event: dict) -> None:
        if event.get("kind") == "stage_start":
            self.started = time.process_time()

    def on_metrics(self, stage: str, step: int, total: int, metrics: dict, eta_s) -> None:
        self.cpu_s = time.process_time() - self.started

    def on_stage_start(self, *args) -> None:
        pass

    def on_stage_end(self, *args) -> None:
        pass


def stage_result(run_dir: Path, stage: str, cpu_s: float) -> dict:
    """What a finished dswb stage scored on the held-out test sums (its final model, re-read) and how
    long its steps took, from its events: the steps, their summed time, its median and mean per step,
    and the CPU time per step (`cpu_s` over the steps)."""
    from dswb.rundir import RunPaths
    from dswb.rundir.events import read_events

    paths = RunPaths(run_dir)
    steps = [e["metrics"]["step_time_s"] for e in read_events(paths.events, ("metrics",)) if e.get("stage") == stage]
    return {"test_acc": held_out_score(paths.final(stage)), "iterations": len(steps), "seconds": sum(steps),
            "iteration_s": statistics.median(steps), "mean_iteration_s": sum(steps) / len(steps),
            "cpu_iteration_s": cpu_s / len(steps)}


def train_stage(stage: str, overrides: list[str], run_dir: Path, clock: StepClock | None = None) -> dict:
    """Run one dswb stage in this process (`overrides` on the defaults) and return its `stage_result`;
    `clock`: a `StepClock` (or a subclass that measures more) as the run's reporter."""
    from dswb.config import load_config
    from dswb.engine.runner import run_training
    from dswb.rundir import create_run_dir

    clock = clock or StepClock()
    paths = create_run_dir(run_dir)
    if run_training(load_config(None, overrides), paths, reporter=clock) != 0:
        raise RuntimeError(f"dswb {stage} failed (see {paths.log})")
    return stage_result(run_dir, stage, clock.cpu_s)


def dswb_side(init: Path, seed: int, seconds: float, workdir: Path, extra: list[str] = (), name: str = "dswb",
              settings: dict | None = None, task: BenchTask = ADDITION) -> dict:
    s = settings or task.settings
    return train_stage("grpo", [
        'run.stages=["grpo"]', f"run.seed={seed}", *task.overrides(), f'grpo.init="{init}"', "grpo.steps=100000",
        f'grpo.data=["{task_files(workdir, task)["grpo"]}"]', "grpo.val_fraction=0.0",
        f"grpo.max_seconds={seconds}", f"grpo.lr={s['lr']}", f"grpo.warmup_steps={s['warmup_steps']}",
        f"grpo.prompts_per_step={s['prompts_per_step']}", f"grpo.group_size={s['group_size']}",
        f"grpo.max_new_tokens={s['max_new_tokens']}", "grpo.beta=0.0",
        'grpo.loss_type="dapo"', 'grpo.schedule="constant"', "grpo.samples_every=0", f"run.threads={THREADS}",
        "eval.every=0", "eval.task_samples=0", "checkpoint.every=0", *extra], workdir / f"{name}-{seed}")


def task_files(workdir: Path, task: BenchTask = ADDITION) -> dict[str, Path]:
    """The task's training split of seed 0 as dswb's record files, written once into `workdir`:
    prompts with answers (`grpo`) and prompt/completion pairs (`sft`)."""
    from dswb.engine.data.records.posttrain import write_jsonl

    files = {"grpo": workdir / f"{task.name}-prompts.jsonl", "sft": workdir / f"{task.name}-sft.jsonl"}
    if not all(f.is_file() for f in files.values()):
        train = task_splits(task).train
        write_jsonl(files["grpo"], [{"prompt": e.prompt, "answer": e.answer} for e in train])
        write_jsonl(files["sft"], [{"prompt": e.prompt, "completion": e.completion} for e in train])
    return files


def task_splits(task: BenchTask = ADDITION):
    """The built-in task's splits as every side of these comparisons reads them (seed 0)."""
    from dswb.engine.data.records.task import AdditionTask

    return AdditionTask(task.digits, 0, task.think).split(task.n_train, 500, 500)


def time_limit(seconds: float):
    """A `TrainerCallback` that stops training once its steps have run `seconds` of wall time; it
    counts the steps (`steps`), their wall time and the process's CPU time from the start of training
    (`elapsed`, `cpu_s`)."""
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        def __init__(self) -> None:
            self.started, self.cpu_started, self.steps, self.elapsed, self.cpu_s = None, None, 0, 0.0, 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.steps += 1
            self.elapsed = time.perf_counter() - self.started
            self.cpu_s = time.process_time() - self.cpu_started
            if self.elapsed >= seconds:
                control.should_training_stop = True

    return TimeLimit()


def trl_result(model, tokenizer, splits, limit, task: BenchTask = ADDITION) -> dict:
    """A TRL side's held-out accuracy (the same greedy exact match as dswb's) and its steps' time."""
    import torch

    from dswb.engine.data.records.task import AdditionTask
    from dswb.engine.eval.task import generation_budget, task_accuracy

    prompts, answers = [e.prompt for e in splits.test], [e.answer for e in splits.test]
    budget = generation_budget(tokenizer, AdditionTask(task.digits, 0, task.think))
    acc = task_accuracy(model, tokenizer, prompts, answers, torch.device("cpu"), max_new_tokens=budget)
    steps = max(1, limit.steps)
    return {"test_acc": acc, "iterations": limit.steps, "seconds": limit.elapsed, "iteration_s": limit.elapsed / steps,
            "mean_iteration_s": limit.elapsed / steps, "cpu_iteration_s": limit.cpu_s / steps}


def trl_rewards(task: BenchTask) -> list:
    """dswb's reward rules of `task` as TRL reward functions (run in TRL's process, as TRL runs them)."""
    from dswb.engine.data.records.task import score
    from dswb.engine.rl.reward_rules import format_score

    def exact_match(completions, answer, **_):
        return [float(score(c, a)) for c, a in zip(completions, answer)]

    def format_reward(completions, **_):
        return [format_score(c) for c in completions]

    rules = {"exact_match": exact_match, "format": format_reward}
    return [rules[name] for name in task.rewards]


def trl_side(init: Path, seed: int, seconds: float, workdir: Path, settings: dict | None = None, peft_config=None,
             name: str = "trl", task: BenchTask = ADDITION, **config) -> dict:
    """TRL's `GRPOTrainer` from `init` for `seconds` (with `peft_config`: its LoRA); `config`: more
    `GRPOConfig` fields."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from dswb.engine.data.records.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(init)
    splits = task_splits(task)
    # TRL tokenizes plain prompts with the tokenizer's special tokens on: dswb's tokenizers then
    # prepend bos themselves, which is the format the model was trained on.
    data = Dataset.from_list([{"prompt": e.prompt, "answer": e.answer} for e in splits.train])
    s = settings or task.settings
    # TRL 1.x turns activation checkpointing on by default; dswb's side recomputes nothing
    config.setdefault("gradient_checkpointing", False)
    args = GRPOConfig(output_dir=str(workdir / f"{name}-{seed}"), seed=seed, learning_rate=s["lr"],
                      warmup_steps=s["warmup_steps"], lr_scheduler_type="constant_with_warmup",
                      per_device_train_batch_size=s["prompts_per_step"] * s["group_size"],
                      num_generations=s["group_size"], max_completion_length=s["max_new_tokens"], temperature=1.0,
                      beta=0.0, loss_type="dapo", max_steps=100000, logging_steps=1000, save_strategy="no",
                      report_to=[], use_cpu=True, bf16=False, disable_tqdm=True, dataloader_num_workers=0, **config)
    torch.set_num_threads(THREADS)   # as dswb's side (run.threads): the same CPU for both
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(init, local_files_only=True, dtype=torch.float32)
    limit = time_limit(seconds)
    trainer = GRPOTrainer(model=model, reward_funcs=trl_rewards(task), args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[limit], peft_config=peft_config)
    trainer.train()
    return trl_result(trainer.model, tokenizer, splits, limit, task)


def _start(workdir: Path, task: BenchTask, quick: bool) -> Path:
    from dswb.bench.rl import _start_model

    if task.name == "reasoning":
        return _reasoning_start(workdir, quick)
    return _start_model(workdir, quick=False)


def _reasoning_start(workdir: Path, quick: bool) -> Path:
    """The cold start of presets/reasoning.toml (pretraining, then SFT on a few worked answers)."""
    from dswb.config import load_config
    from dswb.engine.runner import run_training
    from dswb.presets import find_preset
    from dswb.rundir import create_run_dir

    overrides = ['run.stages=["pretrain", "sft"]', "checkpoint.every=0", "task.seed=0", "run.seed=0"]
    if quick:
        overrides += ["train.steps=60", "sft.steps=10", "eval.every=0"]
    paths = create_run_dir(workdir / "start")
    if run_training(load_config(find_preset("reasoning"), overrides), paths) != 0:
        raise RuntimeError(f"the start model could not be trained (see {paths.log})")
    return paths.final("sft")


def run(quick: bool = False, init: str | None = None, trials: int | None = None, task: str = "addition") -> dict:
    import importlib.util

    from dswb.engine.eval.task import task_accuracy  # noqa: F401  (fail early if dswb is broken)

    bench_task = TASKS[task]
    seconds = 30.0 if quick else 120.0
    seeds = list(range(trials or (1 if quick else 3)))
    have_trl = importlib.util.find_spec("trl") is not None
    with tempfile.TemporaryDirectory(prefix="dswb-bench-grpo-") as tmp:
        workdir = Path(tmp)
        start = Path(init) if init else _start(workdir, bench_task, quick)
        start_acc = held_out_score(start)
        rows = []
        for seed in seeds:
            row = {"seed": seed}
            for name, extra in DSWB_VARIANTS.items():
                row[name] = dswb_side(start, seed, seconds, workdir, extra, name, task=bench_task)
            if have_trl:
                row["trl"] = trl_side(start, seed, seconds, workdir, task=bench_task)
            rows.append(row)
    return {"init": str(start), "start_acc": start_acc, "seconds": seconds, "settings": bench_task.settings,
            "task": task, "rewards": list(bench_task.rewards), "rows": rows, "trl_installed": have_trl}


def held_out_score(model_dir: Path) -> float:
    """The held-out exact match of a saved model (or adapter) on the task's test sums."""
    from dswb.engine.eval.saved_model import evaluate_model

    return evaluate_model(model_dir, device="cpu")["exact_match"]


PER_STEP_HEADS = {"iteration_s": "s/iteration", "mean_iteration_s": "s/iteration", "cpu_iteration_s": "CPU s/it"}


def trial_lines(rows: list[dict], systems: list[str], start_acc: float,
                per_step: tuple[str, ...] = ("iteration_s",)) -> list[str]:
    """The per-seed lines and the mean line of each system in `rows` (`{"seed": n, system: result}`):
    held-out accuracy, its gain over `start_acc`, steps and seconds per step (the `per_step` keys)."""
    heads = " ".join(f"{PER_STEP_HEADS[k]:>12s}" for k in per_step)
    lines = [f"  {'seed':>4s}  {'system':11s} {'test acc':>9s} {'gain':>8s} {'iterations':>10s} {heads}"]
    for row in rows:
        for name in (n for n in systems if n in row):
            lines.append(_trial_line(str(row["seed"]), name, row[name], start_acc, per_step, row[name]["iterations"]))
    for name, mean in system_means(rows, systems, per_step).items():
        lines.append(_trial_line("mean", name, mean, start_acc, per_step))
    return lines


def _trial_line(seed: str, name: str, r: dict, start_acc: float, per_step: tuple[str, ...],
                iterations: int | None = None) -> str:
    steps = f"{iterations:>10d}" if iterations is not None else f"{'':>10s}"
    return (f"  {seed:>4s}  {name:11s} {100 * r['test_acc']:8.1f}% {100 * (r['test_acc'] - start_acc):+7.1f}  {steps} "
            + " ".join(f"{r[k]:12.4f}" for k in per_step))


def system_means(rows: list[dict], systems: list[str], per_step: tuple[str, ...] = ("iteration_s",)) -> dict[str, dict]:
    """Each system's mean held-out accuracy and seconds per step (the `per_step` keys) over the seeds it ran."""
    means = {}
    for name in systems:
        runs = [row[name] for row in rows if name in row]
        if runs:
            means[name] = {k: statistics.mean(r[k] for r in runs) for k in ("test_acc", *per_step)}
    return means


def format_table(result: dict) -> str:
    lines = [f"task {result.get('task', 'addition')}, rewards {result.get('rewards', ['exact_match'])}; start model "
             f"{result['init']}: held-out exact match {100 * result['start_acc']:.1f}%",
             f"{result['seconds']:.0f} s of training per run; settings {result['settings']}", ""]
    lines += trial_lines(result["rows"], [*DSWB_VARIANTS, "trl"], result["start_acc"])
    if not result["trl_installed"]:
        lines.append("  (TRL not installed here: pip install 'trl==1.16.0' to run its side)")
    return "\n".join(lines)
