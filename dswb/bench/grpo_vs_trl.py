"""`dswb bench grpo-vs-trl`: dswb's GRPO against TRL's `GRPOTrainer` in the same time budget.

The comparison of issue 6, made runnable: from the same start model (`--init DIR`, else
presets/rl-start.toml trained here), both train with the same settings for the same seconds of
training (120 s, `--quick`: 30 s), one seed after the other (`--trials`, default 3), and are scored
by the same greedy exact match on the task's 500 held-out test sums:
16 prompts x 8 completions, lr 5e-5 with 10 warmup steps, beta 0, the `dapo` loss, temperature 1,
4 new tokens (3 digits and eos), a 0/1 exact-match reward, fp32 on the CPU.

TRL is an optional extra: `pip install "trl==1.16.0"` in the environment that runs the bench
(without it, only dswb's side runs). TRL's time is its training loop's wall time; dswb's is the
`max_seconds` limit of the stage (training steps only, as TRL's `train()` minus nothing: both
exclude the final evaluation).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

THREADS = 1   # torch threads of both sides: tiny models gain nothing from a second thread (see the README)
SETTINGS = {"prompts_per_step": 16, "group_size": 8, "lr": 5e-5, "warmup_steps": 10, "max_new_tokens": 4}


DSWB_VARIANTS = {
    "dswb": [],                                            # TRL's settings exactly
}


def dswb_side(init: Path, seed: int, seconds: float, workdir: Path, extra: list[str] = (), name: str = "dswb") -> dict:
    from dswb.config import load_config
    from dswb.engine.runner import run_training
    from dswb.rundir import create_run_dir
    from dswb.rundir.events import read_events

    s = SETTINGS
    config = load_config(None, [
        'run.stages=["grpo"]', f"run.seed={seed}", f'grpo.init="{init}"', "grpo.steps=100000",
        f"grpo.max_seconds={seconds}", f"grpo.lr={s['lr']}", f"grpo.warmup_steps={s['warmup_steps']}",
        f"grpo.prompts_per_step={s['prompts_per_step']}", f"grpo.group_size={s['group_size']}",
        f"grpo.max_new_tokens={s['max_new_tokens']}", 'grpo.rewards=["exact_match"]', "grpo.beta=0.0",
        'grpo.loss_type="dapo"', 'grpo.schedule="constant"', "grpo.samples_every=0", "run.threads=1",
        "eval.every=0", "eval.task_samples=0", "checkpoint.every=0", *extra])
    paths = create_run_dir(workdir / f"{name}-{seed}")
    if run_training(config, paths) != 0:
        raise RuntimeError(f"dswb GRPO failed (see {paths.log})")
    events = read_events(paths.events)
    steps = [e for e in events if e.get("kind") == "metrics" and e.get("stage") == "grpo"]
    test = [e["metrics"]["test_acc"] for e in events if e.get("kind") == "eval" and "test_acc" in e.get("metrics", {})]
    trained = sum(e["metrics"]["step_time_s"] for e in steps)
    return {"test_acc": test[-1], "iterations": len(steps), "seconds": trained,
            "iteration_s": statistics.median(e["metrics"]["step_time_s"] for e in steps)}


def trl_side(init: Path, seed: int, seconds: float, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from dswb.engine.data.records.task import AdditionTask, score
    from dswb.engine.data.records.tokenizer import load_tokenizer
    from dswb.engine.eval.task import task_accuracy

    tokenizer = load_tokenizer(init)
    task = AdditionTask(2, 0)
    splits = task.split(9000, 500, 500)
    # TRL tokenizes plain prompts with the tokenizer's special tokens on: dswb's tokenizers then
    # prepend bos themselves, which is the format the model was trained on.
    data = Dataset.from_list([{"prompt": e.prompt, "answer": e.answer} for e in splits.train])

    def exact_match(completions, answer, **_):
        return [float(score(c, a)) for c, a in zip(completions, answer)]

    class TimeLimit(TrainerCallback):
        def __init__(self) -> None:
            self.started = None
            self.steps = 0

        def on_train_begin(self, args, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.steps += 1
            if time.perf_counter() - self.started >= seconds:
                control.should_training_stop = True

    s = SETTINGS
    args = GRPOConfig(output_dir=str(workdir / f"trl-{seed}"), seed=seed, learning_rate=s["lr"],
                      warmup_steps=s["warmup_steps"], lr_scheduler_type="constant_with_warmup",
                      per_device_train_batch_size=s["prompts_per_step"] * s["group_size"],
                      num_generations=s["group_size"], max_completion_length=s["max_new_tokens"], temperature=1.0,
                      beta=0.0, loss_type="dapo", max_steps=100000, logging_steps=1000, save_strategy="no",
                      report_to=[], use_cpu=True, bf16=False, disable_tqdm=True, dataloader_num_workers=0)
    torch.set_num_threads(THREADS)   # as dswb's side (run.threads): the same CPU for both
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(init, local_files_only=True, dtype=torch.float32)
    limit = TimeLimit()
    trainer = GRPOTrainer(model=model, reward_funcs=exact_match, args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[limit])
    started = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - started
    prompts, answers = [e.prompt for e in splits.test], [e.answer for e in splits.test]
    acc = task_accuracy(trainer.model, tokenizer, prompts, answers, torch.device("cpu"))
    return {"test_acc": acc, "iterations": limit.steps, "seconds": elapsed, "iteration_s": elapsed / max(1, limit.steps)}


def _start(workdir: Path) -> Path:
    from dswb.bench.rl import _start_model

    return _start_model(workdir, quick=False)


def run(quick: bool = False, init: str | None = None, trials: int | None = None) -> dict:
    import importlib.util

    from dswb.engine.eval.task import task_accuracy  # noqa: F401  (fail early if dswb is broken)

    seconds = 30.0 if quick else 120.0
    seeds = list(range(trials or (1 if quick else 3)))
    have_trl = importlib.util.find_spec("trl") is not None
    with tempfile.TemporaryDirectory(prefix="dswb-bench-grpo-") as tmp:
        workdir = Path(tmp)
        start = Path(init) if init else _start(workdir)
        start_acc = _score(start)
        rows = []
        for seed in seeds:
            row = {"seed": seed}
            for name, extra in DSWB_VARIANTS.items():
                row[name] = dswb_side(start, seed, seconds, workdir, extra, name)
            if have_trl:
                row["trl"] = trl_side(start, seed, seconds, workdir)
            rows.append(row)
    return {"init": str(start), "start_acc": start_acc, "seconds": seconds, "settings": SETTINGS, "rows": rows,
            "trl_installed": have_trl}


def _score(model_dir: Path) -> float:
    from dswb.engine.eval.saved_model import evaluate_model

    return evaluate_model(model_dir, device="cpu")["exact_match"]


def format_table(result: dict) -> str:
    lines = [f"start model {result['init']}: held-out exact match {100 * result['start_acc']:.1f}%",
             f"{result['seconds']:.0f} s of training per run; settings {result['settings']}", "",
             f"  {'seed':>4s}  {'system':9s} {'test acc':>9s} {'gain':>8s} {'iterations':>10s} {'s/iteration':>12s}"]
    for row in result["rows"]:
        for name in (*DSWB_VARIANTS, "trl"):
            if name in row:
                r = row[name]
                lines.append(f"  {row['seed']:>4d}  {name:9s} {100 * r['test_acc']:8.1f}% "
                             f"{100 * (r['test_acc'] - result['start_acc']):+7.1f}  {r['iterations']:>10d} "
                             f"{r['iteration_s']:12.4f}")
    for name in (*DSWB_VARIANTS, "trl"):
        accs = [row[name]["test_acc"] for row in result["rows"] if name in row]
        its = [row[name]["iteration_s"] for row in result["rows"] if name in row]
        if accs:
            lines.append(f"  mean  {name:9s} {100 * statistics.mean(accs):8.1f}% "
                         f"{100 * (statistics.mean(accs) - result['start_acc']):+7.1f}  {'':>10s} {statistics.mean(its):12.4f}")
    if not result["trl_installed"]:
        lines.append("  (TRL not installed here: pip install 'trl==1.16.0' to run its side)")
    return "\n".join(lines)
