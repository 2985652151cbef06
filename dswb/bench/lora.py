"""`dswb bench lora`: what LoRA and QLoRA adapters save and cost, against full fine-tuning and TRL + peft.

Parts (`--parts`, comma-separated; all by default):
- `memory`: peak RSS of a child process that runs a few SFT steps (5; `--quick`: 2 on the small
  model) on a randomly initialised base-size Llama (75.5 M parameters with the task's 16-token
  vocabulary) in full, with LoRA, and with QLoRA (NF4 base), on the same batches (16 sums); and the
  size of the stage's checkpoint (its step directory's `model.safetensors` + `optimizer.pt`). The
  peak is taken over the training steps (the child resets its high-water mark, `/proc/self/clear_refs`,
  when the stage starts), beside the RSS at the start of the stage, the RSS after the last step split
  into anonymous and file-backed memory (weights loaded from safetensors stay file-backed until
  written to), and the whole process's peak. On a GPU it adds `torch.cuda.max_memory_allocated`.
- `sft`, `grpo`: full fine-tuning against LoRA from the same start model (`--init DIR`, else
  presets/rl-start.toml trained here, as `dswb bench grpo-vs-trl` does) for the same seconds of
  training (30 s and 60 s): held-out exact match after it and seconds per step, wall and CPU.
  LoRA gets 10x full fine-tuning's learning rate (`LORA_LR_FACTOR`), which is where the two meet on
  these tiny models: SFT in 30 s, full at 1e-4 / 3e-4 / 1e-3 and LoRA at 10x reached 94 / 86 / 74%
  and 95 / 86 / 70%; GRPO in 30 s, full at 5e-5 reached 67%, LoRA at 5e-4 66%, at 2e-3 it collapsed.
- `trl-grpo`, `trl-sft`: dswb's LoRA against TRL 1.16's `GRPOTrainer` / `SFTTrainer` with
  `peft_config=LoraConfig(...)`: the same start, adapters (r 16, alpha 32, dropout 0, all linear
  layers but the head), settings and seconds. TRL runs without gradient checkpointing (its default
  is on; dswb never recomputes activations), so both do the same work a step.

Every training runs in its own process (`python -m dswb.bench.lora KIND JSON`) with one torch
thread (two threads on a 2-core machine that others share stall each other), seeds one after the
other (`--trials`, default 3), every side on the task's seed-0 training split and scored on its 500
held-out test sums (`dswb.bench.grpo_vs_trl`). The goal against TRL: at least its held-out gain in
at most 2/3 of its time per iteration. TRL is optional (`pip install "trl==1.16.0"`): without it,
its parts are left out.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from dswb.bench.grpo_vs_trl import SETTINGS as GRPO_FULL
from dswb.bench.grpo_vs_trl import (THREADS, StepClock, dswb_side, held_out_score, system_means, task_files,
                                    task_splits, time_limit, train_stage, trial_lines, trl_result, trl_side)
from dswb.bench.rl import _start_model   # presets/rl-start.toml trained into a directory (quick: a 60-step pretrain)

PARTS = ("memory", "sft", "grpo", "trl-grpo", "trl-sft")
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.0}
LORA_LR_FACTOR = 10
GRPO_LORA = {**GRPO_FULL, "lr": GRPO_FULL["lr"] * LORA_LR_FACTOR}
# presets/rl-start.toml's SFT but its lr: continuing from its model, 1e-4 did best of 1e-4 / 3e-4 / 1e-3 in 30 s
SFT_FULL = {"lr": 1e-4, "warmup_steps": 10, "max_tokens": 2816, "betas": [0.9, 0.98]}
SFT_LORA = {**SFT_FULL, "lr": SFT_FULL["lr"] * LORA_LR_FACTOR}
TASK_SEQ_LEN = 11   # every SFT sample: bos, "ab+cd=", three answer digits, eos (2816 tokens: 256 a batch)
SYSTEMS = {"full": "dswb full", "lora": "dswb lora", "trl-lora": "trl lora"}
GOAL_TIME_RATIO = 2 / 3
PER_STEP = ("mean_iteration_s", "cpu_iteration_s")   # wall and CPU seconds per step (mean over the run)


def lora_overrides() -> list[str]:
    return ["lora.enabled=true", f"lora.r={LORA['r']}", f"lora.alpha={LORA['alpha']}",
            f"lora.dropout={LORA['dropout']}", 'lora.target_modules=["all-linear"]']


def memory_variants() -> dict[str, list[str]]:
    """Full fine-tuning, LoRA and QLoRA (NF4; left out where bitsandbytes is not installed)."""
    import importlib.util

    variants = {"full": [], "lora": lora_overrides(), "qlora": [*lora_overrides(), 'lora.quantize="nf4"']}
    if importlib.util.find_spec("bitsandbytes") is None:
        del variants["qlora"]
    return variants


def peft_lora_config():
    """The same adapters as `lora_overrides`, as peft's config for TRL."""
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")


# -- memory ---------------------------------------------------------------------------------------

class PeakWatch(StepClock):
    """A run's reporter that resets the process's RSS high-water mark when the stage starts and reads
    it after every step (the peak over the training steps), with the RSS's anonymous and file-backed
    parts after the last step (a model loaded from safetensors is file-backed until written to)."""

    def __init__(self) -> None:
        super().__init__()
        self.start: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.windowed = False
        self.step_s: list[float] = []

    def on_event(self, event: dict) -> None:
        super().on_event(event)
        if event.get("kind") == "stage_start":
            self.start = proc_status()
            self.windowed = reset_peak()
            if (torch := cuda_torch()) is not None:
                torch.cuda.reset_peak_memory_stats()

    def on_metrics(self, stage: str, step: int, total: int, metrics: dict, eta_s) -> None:
        super().on_metrics(stage, step, total, metrics, eta_s)
        self.last = proc_status()
        if (torch := cuda_torch()) is not None:
            self.last["cuda_peak"] = torch.cuda.max_memory_allocated() / 2**20
        self.step_s.append(float(metrics["step_time_s"]))

    def result(self) -> dict:
        peak = self.last.get("VmHWM", 0.0) if self.windowed else process_peak_mb()
        return {"rss_start_mb": self.start.get("VmRSS", 0.0), "peak_steps_mb": peak, "peak_windowed": self.windowed,
                "anon_end_mb": self.last.get("RssAnon", 0.0), "file_end_mb": self.last.get("RssFile", 0.0),
                "step_s": sorted(self.step_s)[len(self.step_s) // 2], "steps": len(self.step_s),
                **({"cuda_peak_mb": self.last["cuda_peak"]} if "cuda_peak" in self.last else {})}


def cuda_torch():
    """torch, once this process has started CUDA (a run on `run.device = "cuda"`, or "auto" on a GPU);
    else None."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None


def proc_status() -> dict[str, float]:
    """This process's RSS now (`VmRSS`, split into `RssAnon` and `RssFile`) and its high-water mark
    (`VmHWM`, since the start or the last `reset_peak`), in MB; empty where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    fields = re.findall(r"^(VmRSS|VmHWM|RssAnon|RssFile):\s+(\d+) kB", status, re.MULTILINE)
    return {k: int(v) / 1024 for k, v in fields}


def reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def process_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(args: dict) -> dict:
    """One SFT run of the memory part, in this process: its RSS and its checkpoint's files."""
    from dswb.config import load_config
    from dswb.engine.checkpoint.layout import latest_checkpoint
    from dswb.engine.runner import run_training
    from dswb.rundir import create_run_dir
    from dswb.rundir.events import read_events

    watch = PeakWatch()
    paths = create_run_dir(Path(args["run_dir"]))
    if run_training(load_config(None, args["overrides"]), paths, reporter=watch) != 0:
        raise RuntimeError(f"the memory run failed (see {paths.log})")
    ckpt = latest_checkpoint(paths.checkpoints("sft")).path
    model = next(e["model"] for e in read_events(paths.events, ("stage_start",)))
    return {**watch.result(), "peak_process_mb": process_peak_mb(), "params": model["params"],
            "trainable": model["trainable"],
            "checkpoint_mb": {f: (ckpt / f).stat().st_size / 1e6 for f in ("model.safetensors", "optimizer.pt")}}


def random_start(directory: Path, size: str) -> Path:
    """A randomly initialised Llama of `size` with the task's character tokenizer, saved once."""
    import torch

    from dswb.engine.data.records.tokenizer import build_char_tokenizer
    from dswb.engine.model.build import build_model

    if not (directory / "config.json").is_file():
        tokenizer = build_char_tokenizer()
        torch.manual_seed(0)
        model, _ = build_model(size, "", tokenizer, 64)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return directory


def memory(workdir: Path, quick: bool) -> dict:
    size, steps = ("small", 2) if quick else ("base", 5)
    return measure_memory(workdir, size, steps, 16, memory_variants())


def measure_memory(workdir: Path, size: str, steps: int, batch: int, variants: dict[str, list[str]],
                   run=None) -> dict:
    """The memory part for a model `size`: each variant (extra overrides) as one SFT run of `steps`
    steps of `batch` sequences, by `run(kind, args)` (default: `in_child`, a process each)."""
    run = run or in_child
    start = random_start(workdir / f"random-{size}", size)
    common = ['run.stages=["sft"]', f'sft.init="{start}"', f'sft.data=["{task_files(workdir)["sft"]}"]',
              "sft.val_fraction=0.0", f"sft.steps={steps}", "sft.warmup_steps=0", "sft.grad_accum=1", "sft.lr=1e-4",
              'batching.mode="fixed"', f"batching.batch_size={batch}", "eval.every=0", "eval.task_samples=0",
              "checkpoint.every=0", "run.threads=1"]
    rows = {}
    for name, extra in variants.items():
        rows[name] = run("memory", {"overrides": common + extra, "run_dir": str(workdir / f"memory-{name}")})
    return {"size": size, "steps": steps, "batch_size": batch, "rows": rows}


# -- training sides ---------------------------------------------------------------------------

def dswb_sft(init: Path, seed: int, seconds: float, workdir: Path, lora: bool) -> dict:
    s = SFT_LORA if lora else SFT_FULL
    return train_stage("sft", [
        'run.stages=["sft"]', f"run.seed={seed}", "task.seed=0", f'sft.init="{init}"',
        f'sft.data=["{task_files(workdir)["sft"]}"]',
        "sft.val_fraction=0.0", "sft.steps=100000", f"sft.max_seconds={seconds}", f"sft.lr={s['lr']}",
        f"sft.warmup_steps={s['warmup_steps']}", 'sft.schedule="constant"', "sft.grad_accum=1",
        f"sft.betas={s['betas']}", "sft.weight_decay=0.0", f"batching.max_tokens={s['max_tokens']}",
        f"run.threads={THREADS}", "eval.every=0", "eval.task_samples=0", "checkpoint.every=0",
        *(lora_overrides() if lora else [])], workdir / f"sft-{'lora' if lora else 'full'}-{seed}")


def trl_sft(init: Path, seed: int, seconds: float, workdir: Path) -> dict:
    """TRL's `SFTTrainer` with peft's LoRA: the same records, batch (256 sums of 11 tokens), optimizer
    and seconds as `dswb_sft`."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from dswb.engine.data.records.tokenizer import load_tokenizer

    s = SFT_LORA
    tokenizer = load_tokenizer(init)
    splits = task_splits()
    data = Dataset.from_list([{"prompt": e.prompt, "completion": e.answer} for e in splits.train])
    args = SFTConfig(output_dir=str(workdir / f"trl-sft-{seed}"), seed=seed, learning_rate=s["lr"],
                     warmup_steps=s["warmup_steps"], lr_scheduler_type="constant_with_warmup",
                     adam_beta1=s["betas"][0], adam_beta2=s["betas"][1], weight_decay=0.0, max_grad_norm=1.0,
                     per_device_train_batch_size=s["max_tokens"] // TASK_SEQ_LEN, gradient_checkpointing=False,
                     max_steps=100000, logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                     disable_tqdm=True, dataloader_num_workers=0, completion_only_loss=True, packing=False)
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(init, local_files_only=True, dtype=torch.float32)
    limit = time_limit(seconds)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[limit],
                         peft_config=peft_lora_config())
    trainer.train()
    return trl_result(trainer.model, tokenizer, splits, limit)


def train_child(stage: str, args: dict) -> dict:
    """One side of the `sft` / `grpo` comparisons, in this process."""
    system, init, workdir = args["system"], Path(args["init"]), Path(args["workdir"])
    run = (init, args["seed"], args["seconds"], workdir)
    if stage == "sft":
        return trl_sft(*run) if system == "trl-lora" else dswb_sft(*run, lora=system == "lora")
    if system == "trl-lora":
        return trl_side(*run, settings=GRPO_LORA, peft_config=peft_lora_config(), name="trl-lora",
                        gradient_checkpointing=False)
    lora = system == "lora"
    return dswb_side(*run, extra=lora_overrides() if lora else [], name=system,
                     settings=GRPO_LORA if lora else GRPO_FULL)


def child(kind: str, args: dict) -> dict:
    """What a measuring subprocess does (`python -m dswb.bench.lora KIND JSON`)."""
    return memory_child(args) if kind == "memory" else train_child(kind, args)


def in_child(kind: str, args: dict, timeout: float = 1800) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dswb.bench.lora", kind, json.dumps(args)], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench lora child {kind} {args.get('system', '')} failed: {proc.stderr.strip()[-2000:]}")
    # the machine's 1-minute load average as the child ends: above 1 (the child itself), others ran beside it
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_1min": os.getloadavg()[0]}


# -- the comparisons --------------------------------------------------------------------------

def systems_for(stage: str, parts: set[str]) -> list[str]:
    chosen = ["full", "lora"] if stage in parts else []
    if f"trl-{stage}" in parts:
        chosen += [s for s in ("lora", "trl-lora") if s not in chosen]
    return chosen


def compare(stage: str, systems: list[str], init: Path, seeds: list[int], seconds: float, workdir: Path) -> dict:
    rows = []
    for seed in seeds:
        args = {"init": str(init), "seed": seed, "seconds": seconds, "workdir": str(workdir)}
        rows.append({"seed": seed, **{s: in_child(stage, {**args, "system": s}) for s in systems}})
    settings = {"full": GRPO_FULL if stage == "grpo" else SFT_FULL, "lora": GRPO_LORA if stage == "grpo" else SFT_LORA}
    return {"seconds": seconds, "systems": systems, "settings": settings, "rows": rows,
            "means": system_means(rows, systems, PER_STEP)}


def choose_parts(parts: str | None, have_trl: bool) -> list[str]:
    from dswb.errors import UserError

    chosen = [p.strip() for p in parts.split(",") if p.strip()] if parts else list(PARTS)
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise UserError(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    if not have_trl:
        if parts and any(p.startswith("trl") for p in chosen):
            raise UserError("--parts trl-*: TRL is not installed here (pip install 'trl==1.16.0')")
        chosen = [p for p in chosen if not p.startswith("trl")]
    return chosen


def run(quick: bool = False, init: str | None = None, trials: int | None = None, parts: str | None = None) -> dict:
    import importlib.util

    have_trl = importlib.util.find_spec("trl") is not None
    chosen = choose_parts(parts, have_trl)
    seeds = list(range(trials or (1 if quick else 3)))
    seconds = {"sft": 5.0 if quick else 30.0, "grpo": 8.0 if quick else 60.0}
    result = {"quick": quick, "parts": chosen, "lora": LORA, "lora_lr_factor": LORA_LR_FACTOR, "threads": THREADS,
              "trl_installed": have_trl}
    with tempfile.TemporaryDirectory(prefix="dswb-bench-lora-") as tmp:
        workdir = Path(tmp)
        if "memory" in chosen:
            result["memory"] = memory(workdir, quick)
        stages = {stage: systems_for(stage, set(chosen)) for stage in ("sft", "grpo")}
        if any(stages.values()):
            start = Path(init) if init else _start_model(workdir, quick)
            result["start"] = {"init": str(start), "start_acc": held_out_score(start)}
            for stage, systems in stages.items():
                if systems:
                    result[stage] = compare(stage, systems, start, seeds, seconds[stage], workdir)
    return result


# -- the table --------------------------------------------------------------------------------

def memory_lines(m: dict) -> list[str]:
    rows, full = m["rows"], m["rows"]["full"]
    lines = [f"memory: SFT on a random llama-{m['size']}, {m['steps']} steps of {m['batch_size']} sequences, "
             f"one process and one thread each",
             "  peak: RSS high-water mark over the steps; at start: RSS when the stage starts; after: RSS after the "
             "last step, anonymous + file-backed",
             f"  {'variant':8s} {'trainable':>12s} {'params':>12s} {'at start':>9s} {'peak':>9s} {'vs full':>8s} "
             f"{'after: anon':>12s} {'+ file':>8s} {'process peak':>13s} {'s/step':>7s}"]
    for name, r in rows.items():
        lines.append(f"  {name:8s} {r['trainable']:>12,d} {r['params']:>12,d} {r['rss_start_mb']:>6.0f} MB "
                     f"{r['peak_steps_mb']:>6.0f} MB {r['peak_steps_mb'] / full['peak_steps_mb']:>7.2f}x "
                     f"{r['anon_end_mb']:>9.0f} MB {r['file_end_mb']:>5.0f} MB {r['peak_process_mb']:>10.0f} MB "
                     f"{r['step_s']:>7.2f}")
    if all("cuda_peak_mb" in r for r in rows.values()):
        lines.append("  GPU: peak allocated (torch.cuda.max_memory_allocated over the steps): " + ", ".join(
            f"{name} {r['cuda_peak_mb']:.0f} MB ({r['cuda_peak_mb'] / full['cuda_peak_mb']:.2f}x)"
            for name, r in rows.items()))
    if not all(r["peak_windowed"] for r in rows.values()):
        lines.append("  (the high-water mark could not be reset here: 'peak' is the process's peak)")
    lines += ["  checkpoint (the step directory's files):",
              f"  {'variant':8s} {'model.safetensors':>18s} {'optimizer.pt':>13s} {'total':>10s} {'vs full':>8s}"]
    full_mb = sum(full["checkpoint_mb"].values())
    for name, r in rows.items():
        ckpt = r["checkpoint_mb"]
        lines.append(f"  {name:8s} {ckpt['model.safetensors']:>15.1f} MB {ckpt['optimizer.pt']:>10.1f} MB "
                     f"{sum(ckpt.values()):>7.1f} MB {sum(ckpt.values()) / full_mb:>7.3f}x")
    return lines


def stage_lines(stage: str, r: dict, start_acc: float) -> list[str]:
    lr = {k: v["lr"] for k, v in r["settings"].items()}
    loads = [row[s]["load_1min"] for row in r["rows"] for s in r["systems"]]
    lines = [f"{stage}: {r['seconds']:.0f} s of training per run; lr full {lr['full']:g}, lora {lr['lora']:g}; "
             f"seconds per step: wall and CPU, mean over the run; machine load {min(loads):.1f}-{max(loads):.1f}"]
    rows = [{"seed": row["seed"], **{SYSTEMS[s]: row[s] for s in r["systems"]}} for row in r["rows"]]
    lines += trial_lines(rows, [SYSTEMS[s] for s in r["systems"]], start_acc, PER_STEP)
    means = r["means"]
    if "full" in means and "lora" in means:
        lines.append(f"  dswb lora vs full: gain {_gain(means['lora'], start_acc)} vs "
                     f"{_gain(means['full'], start_acc)}, time per step {_ratios(means['lora'], means['full'])}")
    if "trl-lora" in means:
        ours, trl = means["lora"], means["trl-lora"]
        met = [ours["test_acc"] >= trl["test_acc"] and ours[k] / trl[k] <= GOAL_TIME_RATIO for k in PER_STEP]
        lines.append(f"  dswb lora vs trl lora: gain {_gain(ours, start_acc)} vs {_gain(trl, start_acc)}, "
                     f"time per step {_ratios(ours, trl)}; goal (gain >= TRL's in <= {GOAL_TIME_RATIO:.2f}x its time): "
                     f"wall {'met' if met[0] else 'not met'}, CPU {'met' if met[1] else 'not met'}")
    return lines


def _ratios(a: dict, b: dict) -> str:
    return f"{a[PER_STEP[0]] / b[PER_STEP[0]]:.2f}x wall, {a[PER_STEP[1]] / b[PER_STEP[1]]:.2f}x CPU"


def _gain(mean: dict, start_acc: float) -> str:
    return f"{100 * (mean['test_acc'] - start_acc):+.1f}"


def format_table(result: dict) -> str:
    lines = [f"LoRA r={result['lora']['r']} alpha={result['lora']['alpha']:g} dropout={result['lora']['dropout']:g}, "
             f"all linear layers; parts: {', '.join(result['parts'])}"]
    if "memory" in result:
        lines += [""] + memory_lines(result["memory"])
    if "start" in result:
        start_acc = result["start"]["start_acc"]
        lines += ["", f"start model {result['start']['init']}: held-out exact match {100 * start_acc:.1f}%; "
                      f"{result['threads']} torch thread per run"]
        for stage in ("sft", "grpo"):
            if stage in result:
                lines += [""] + stage_lines(stage, result[stage], start_acc)
    if not result["trl_installed"]:
        lines.append("(TRL not installed here: pip install 'trl==1.16.0' to run its parts)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], json.loads(sys.argv[2]))))
