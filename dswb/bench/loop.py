"""`dswb bench loop`: what dswb's training loop costs, and how fast it is against `Trainer`.

1. Overhead: dswb's full loop (`run_loop`: control polling, lr schedule, token-weighted step,
   metrics events, status file, streaming statistics, system sampler) vs a bare PyTorch loop over
   the *same* collated batches, same tiny model, same optimizer settings and seed. Runs alternate
   and the best of each is kept; the loss trajectories must agree (they do the same work).
   Goal: overhead <= 3%.
2. Throughput: tokens/s of dswb (bucketed batches under a padded budget, prefetched) vs
   transformers' `Trainer` with group-by-length sampling (`train_sampling_strategy="group_by_length"`, the 5.x name of `group_by_length`), pretraining the same model on the same
   variable-length corpus for one epoch, i.e. the same real tokens. Goal: dswb faster.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dswb.config import load_config
from dswb.engine.data.batches.batching import plan_bucketed
from dswb.engine.data.batches.collate import collate_padded
from dswb.engine.context import StageContext
from dswb.engine.telemetry.control import RunControl
from dswb.engine.train.losses import token_loss_sum
from dswb.engine.train.loop import LoopParts, lm_step, run_loop
from dswb.engine.telemetry.monitor import Monitor
from dswb.engine.train.optim import build_optimizer
from dswb.rundir.layout import create_run_dir
from dswb.rundir.status import new_status

VOCAB, MAX_TOKENS = 2048, 4096


def corpus(n_docs: int, seed: int = 0) -> list[list[int]]:
    """Random-token documents with log-normal lengths (median ~90, clipped to [16, 512])."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(4.5, 0.7, n_docs)), 16, 512).astype(int)
    return [rng.integers(3, VOCAB, size=n).tolist() for n in lengths]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    from dswb.engine.model.build import llama_config

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config("tiny", VOCAB, 512, 1, 2, 0))


def _config(steps: int):
    return load_config(None, [f"train.steps={steps}", "train.warmup_steps=0", "train.schedule=constant",
                              "train.lr=1e-3", "train.weight_decay=0.0", "train.clip_grad=1.0", "eval.every=0",
                              "checkpoint.every=0", "monitor.log_every=1", "monitor.system_every_s=0.5"])


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
AMP = torch.bfloat16 if DEVICE.type == "cuda" else None


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(batches: list) -> tuple[float, list[float]]:
    from dswb.engine.model.device import autocast

    model = tiny_model().to(DEVICE)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                            fused=DEVICE.type == "cuda")
    losses = []
    _sync()
    t0 = time.perf_counter()
    for b in batches:
        b = b.to(DEVICE, non_blocking=True)
        with autocast(DEVICE, AMP):
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
        loss = token_loss_sum(logits, b.labels) / b.n_target
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    _sync()
    return time.perf_counter() - t0, losses


def dswb_loop(batches: list, workdir: Path) -> tuple[float, list[float]]:
    from dswb.engine.telemetry.system import SystemSampler

    cfg = _config(len(batches))
    model = tiny_model().to(DEVICE)
    model.train()
    opt = build_optimizer(model, cfg.train, DEVICE)
    paths = create_run_dir(workdir / f"run-{time.monotonic_ns()}")
    monitor = Monitor(paths, new_status("pretrain", len(batches)))
    sampler = SystemSampler(interval_s=0.5).start()
    ctx = StageContext(config=cfg, paths=paths, monitor=monitor, control=RunControl(paths.root),
                       device=DEVICE, amp_dtype=AMP, cache_root=workdir, resume=False, system=sampler)
    step = lm_step(model, opt, iter(batches), ctx, cfg.train.grad_accum, cfg.train.clip_grad)
    parts = LoopParts(stage="pretrain", model=model, optimizer=opt, step=step, data_state=lambda: {},
                      evaluate=lambda step: {}, optim=cfg.train)
    _sync()
    t0 = time.perf_counter()
    run_loop(ctx, parts)
    _sync()
    elapsed = time.perf_counter() - t0
    sampler.stop()
    monitor.close()
    from dswb.rundir.events import read_events
    events = read_events(paths.events)
    ckpt_s = sum(e["seconds"] for e in events if e["kind"] == "checkpoint")  # the final checkpoint is not a step
    losses = [e["metrics"]["loss"] for e in events if e["kind"] == "metrics"]
    return elapsed - ckpt_s, losses


def overhead(n_batches: int, repeats: int) -> dict:
    docs = corpus(3000)
    plan = plan_bucketed([len(d) for d in docs], MAX_TOKENS, seed=0, epoch=0, megabatch=64, max_len=512)
    batches = [collate_padded([docs[i] for i in b], 0) for b in plan.batches[:n_batches]]
    bare_times, dswb_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_loop(batches[:3])  # warm-up (allocator, kernels)
        for _ in range(repeats):
            t, bare_losses = bare_loop(batches)
            bare_times.append(t)
            t, dswb_losses = dswb_loop(batches, Path(tmp))
            dswb_times.append(t)
    max_diff = max(abs(a - b) for a, b in zip(bare_losses, dswb_losses))
    bare, ours = min(bare_times), min(dswb_times)
    return {"steps": n_batches, "repeats": repeats, "bare_s": bare, "dswb_s": ours,
            "overhead_pct": 100.0 * (ours / bare - 1.0), "max_loss_diff": max_diff,
            "bare_all_s": bare_times, "dswb_all_s": dswb_times, "goal_pct": 3.0}


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, docs):
        self.docs = docs

    def __len__(self):
        return len(self.docs)

    def __getitem__(self, i):
        return {"input_ids": self.docs[i]}


def trainer_epoch(docs: list[list[int]], batch_size: int) -> dict:
    """One epoch of transformers' Trainer (group_by_length) on the same model and corpus."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    real = {"tokens": 0}

    def collate(items):
        b = collate_padded([it["input_ids"] for it in items], 0)
        real["tokens"] += b.n_real
        labels = b.labels.clone()
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": labels}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.elapsed = time.perf_counter() - self.t0

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch_size, num_train_epochs=1,
                                 train_sampling_strategy="group_by_length", learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1.0,
                                 lr_scheduler_type="constant", warmup_steps=0, logging_strategy="no",
                                 save_strategy="no", report_to=[], use_cpu=DEVICE.type == "cpu",
                                 bf16=DEVICE.type == "cuda", dataloader_num_workers=0,
                                 disable_tqdm=True, seed=0)
        trainer = Trainer(model=tiny_model(), args=args, train_dataset=_ListDataset(docs),
                          data_collator=collate, callbacks=[clock])
        trainer.train()
    return {"seconds": clock.elapsed, "real_tokens": real["tokens"], "tokens_per_s": real["tokens"] / clock.elapsed,
            "batch_size": batch_size}


def dswb_epoch(docs: list[list[int]]) -> dict:
    from dswb.engine.data.batches.loader import Prefetcher

    plan = plan_bucketed([len(d) for d in docs], MAX_TOKENS, seed=0, epoch=0, megabatch=64, max_len=512)
    stream = (collate_padded([docs[i] for i in b], 0) for b in plan.batches)
    with tempfile.TemporaryDirectory() as tmp:
        prefetch = Prefetcher(stream, depth=2)
        t, _ = dswb_loop_iter(prefetch, len(plan.batches), Path(tmp))
        prefetch.close()
    real = sum(len(d) for d in docs)
    return {"seconds": t, "real_tokens": real, "tokens_per_s": real / t, "batches": len(plan.batches)}


def dswb_loop_iter(batches, n: int, workdir: Path):
    return dswb_loop(_Sized(batches, n), workdir)


class _Sized:
    """An iterator with a length, so `dswb_loop` can size the run from it."""

    def __init__(self, it, n):
        self.it, self.n = iter(it), n

    def __len__(self):
        return self.n

    def __iter__(self):
        return self.it

    def __next__(self):
        return next(self.it)


def throughput(n_docs: int) -> dict:
    docs = corpus(n_docs, seed=1)
    mean_len = sum(len(d) for d in docs) / len(docs)
    ours = dswb_epoch(docs)
    batch_size = max(1, round(ours["real_tokens"] / ours["batches"] / mean_len))  # same real tokens per step
    try:
        theirs = trainer_epoch(docs, batch_size)
    except ImportError as exc:  # Trainer needs `accelerate`
        return {"dswb": ours, "trainer": None, "skipped": f"Trainer unavailable: {exc}"}
    return {"dswb": ours, "trainer": theirs, "speedup": ours["tokens_per_s"] / theirs["tokens_per_s"]}


def run(quick: bool = False) -> dict:
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    result = {"torch_threads": threads, "device": name, "model": "llama-tiny (vocab 2048)",
              "max_tokens": MAX_TOKENS, "pid": os.getpid()}
    result["overhead"] = overhead(n_batches=12 if quick else 40, repeats=2 if quick else 3)
    result["throughput"] = throughput(n_docs=400 if quick else 2000)
    return result


def format_table(result: dict) -> str:
    o, t = result["overhead"], result["throughput"]
    lines = [
        f"device: {result['device']}",
        f"loop overhead ({o['steps']} steps, best of {o['repeats']}, {result['torch_threads']} threads):",
        f"  bare PyTorch loop   {o['bare_s']:8.2f} s",
        f"  dswb run_loop       {o['dswb_s']:8.2f} s   overhead {o['overhead_pct']:+.2f}%  (goal <= {o['goal_pct']:.0f}%)",
        f"  max |loss diff|     {o['max_loss_diff']:.2e}",
        "throughput, one epoch of the same corpus:",
        f"  dswb (bucketed, prefetch)  {t['dswb']['tokens_per_s']:10.0f} tok/s  "
        f"({t['dswb']['real_tokens']} tokens, {t['dswb']['seconds']:.1f} s, {t['dswb']['batches']} steps)",
    ]
    if t.get("trainer"):
        tr = t["trainer"]
        lines.append(f"  Trainer group_by_length   {tr['tokens_per_s']:10.0f} tok/s  "
                     f"({tr['real_tokens']} tokens, {tr['seconds']:.1f} s, batch {tr['batch_size']})")
        lines.append(f"  dswb / Trainer            {t['speedup']:10.2f}x")
    else:
        lines.append(f"  Trainer: {t.get('skipped')}")
    return "\n".join(lines)
