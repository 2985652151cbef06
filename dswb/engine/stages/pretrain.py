"""Pretraining: next-token prediction on the run's corpus (or the built-in task's text).

setup (data, tokenizer, model, optimizer, batches, resume) -> `run_loop` -> final model.
In a distributed run rank 0 prepares the data cache first, each rank reads its shard of the batches,
and a pipeline evaluates through its stages (no task accuracy: a pipeline cannot generate).
"""

from __future__ import annotations

import time

import torch

from dswb.engine.checkpoint.local import latest_checkpoint, load_checkpoint, remove_partial
from dswb.engine.context import StageContext
from dswb.engine.data.corpus.events import progress_events, publish_report
from dswb.engine.data.corpus.pipeline import prepare_data
from dswb.engine.data.corpus.prepare import PreparationStopped
from dswb.engine.eval.loss import validation_batches, validation_loss
from dswb.engine.stages.common import task_info
from dswb.engine.data.batches.loader import BatchStream, Prefetcher, length_histogram
from dswb.engine.train.loop import LoopParts, lm_step, run_loop
from dswb.engine.model.build import build_model
from dswb.engine.train.optim import build_optimizer
from dswb.engine.checkpoint.dcp import save_final_model
from dswb.engine.distributed.world import active
from dswb.engine.distributed.pipeline import pipeline_of, pipeline_validation_loss
from dswb.engine.distributed.sharding import load_stream_state, stream_shard
from dswb.engine.eval.task import task_accuracy
from dswb.engine.train.prepare import model_hooks, prepare_model
from dswb.stats import StatsBook

STAGE = "pretrain"


def run(ctx: StageContext) -> str:
    cfg, mon = ctx.config, ctx.monitor
    mon.log("preparing data", stage=STAGE)
    t0 = time.perf_counter()
    world = active()

    def prepare(control):
        return prepare_data(cfg, ctx.cache_root, lambda msg: mon.log(msg, stage=STAGE),
                            progress=progress_events(mon, STAGE, control))
    try:
        if world is None:
            data = prepare(ctx.control)
        else:   # rank 0 fills the cache (stoppable alone), then the other ranks read it
            data = world.main_first(lambda: prepare(ctx.control.local if world.is_main else None),
                                    passthrough=(PreparationStopped,))
    except PreparationStopped:
        mon.log("data preparation stopped; it resumes from its last complete shard", stage=STAGE)
        return "stopped"
    if world is None or world.is_main:
        publish_report(mon, STAGE, ctx.paths.root, data.stats)
    mon.log(f"data ready in {time.perf_counter() - t0:.1f}s: {data.stats.get('train_samples')} train / "
            f"{data.stats.get('val_samples')} val samples", stage=STAGE)

    torch.manual_seed(cfg.run.seed)
    model, info = build_model(cfg.model.size, cfg.model.path, data.tokenizer, cfg.model.max_seq_len)
    model = prepare_model(model, cfg, ctx.device)
    optimizer = build_optimizer(model, cfg.train, ctx.device)
    pad_id = data.tokenizer.pad_token_id
    stream = BatchStream(data.train, cfg.batching, pad_id=pad_id, max_len=cfg.model.max_seq_len, seed=cfg.run.seed,
                         batches_per_step=cfg.train.grad_accum, **stream_shard())

    ckpt_dir = ctx.paths.checkpoints(STAGE)
    if remove_partial(ckpt_dir):
        mon.log("removed an incomplete checkpoint left by an interrupted write", stage=STAGE)
    start_step, state = 0, {}
    ckpt = latest_checkpoint(ckpt_dir) if ctx.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, ctx.device)
        start_step = state.pop("step")
        note = load_stream_state(stream, state.pop("data"))
        if note:
            mon.log(note, stage=STAGE)
        mon.stats = StatsBook.from_dict(state.pop("stats"))
        mon.log(f"resumed from {ckpt.path.name}", stage=STAGE, step=start_step)

    lengths = data.train.lengths  # numpy, from the memory-mapped store
    mon.emit("stage_start", STAGE, start_step, total_steps=cfg.train.steps,
             model={"params": info.params, "layers": info.layers, "hidden": info.hidden, "vocab": info.vocab,
                    "source": info.source},
             data={**{k: v for k, v in data.stats.items() if k != "report"}, "train_tokens": int(lengths.sum())})
    mon.emit("batching", STAGE, start_step, hist=length_histogram(lengths),
             metrics={"samples": len(lengths), "mean_len": float(lengths.sum()) / max(1, len(lengths)),
                      "max_len": int(lengths.max()) if len(lengths) else 0, **stream.counters,
                      "max_tokens": cfg.batching.max_tokens})
    mon.write_status(force=True, state="running", stage=STAGE, step=start_step, total_steps=cfg.train.steps)

    val = validation_batches(data.val, cfg, pad_id)
    pipelined = pipeline_of(model) is not None
    n_task = cfg.eval.task_samples if data.task is not None and not pipelined else 0

    def evaluate(step: int) -> dict:
        if pipelined:
            return pipeline_validation_loss(model, val, ctx.device)
        metrics = validation_loss(model, val, ctx.device, ctx.amp_dtype)
        if n_task:
            metrics["task_acc"] = task_accuracy(model, data.tokenizer, data.eval_prompts[:n_task],
                                                data.eval_answers[:n_task], ctx.device)
        return metrics

    probe = (lambda: validation_loss(model, val[:1], ctx.device, ctx.amp_dtype)["val_loss"]) if val else None
    packed = cfg.batching.mode == "pack"
    context = cfg.model.max_seq_len if packed else min(float(lengths.mean()), cfg.model.max_seq_len)
    hooks = model_hooks(model, ctx, STAGE, probe=probe, context=context)

    prefetch = Prefetcher(stream, depth=cfg.batching.prefetch, pin=ctx.device.type == "cuda")
    step = lm_step(model, optimizer, iter(prefetch), ctx, cfg.train.grad_accum, cfg.train.clip_grad,
                   data_wait=lambda: prefetch.wait_s)
    parts = LoopParts(stage=STAGE, model=model, optimizer=optimizer, step=step, data_state=prefetch.state_dict,
                      evaluate=evaluate, optim=cfg.train, start_step=start_step, state=state,
                      metric_sources=hooks.metric_sources, step_hooks=hooks.step_hooks,
                      flops_per_token=hooks.flops_per_token)
    try:
        outcome = run_loop(ctx, parts)
    finally:
        prefetch.close()
    if outcome != "finished":
        return outcome
    if data.task is not None and data.test_prompts and not pipelined:
        acc = task_accuracy(model, data.tokenizer, data.test_prompts, data.test_answers, ctx.device)
        mon.eval(STAGE, cfg.train.steps, {"test_acc": acc})
    final = save_final_model(ctx.paths.final(STAGE), model, data.tokenizer,
                       {"stage": STAGE, "step": cfg.train.steps, "run_id": ctx.paths.run_id, "prompt_format": "plain",
                        "task": task_info(cfg), "last_eval": mon.status.get("last_eval", {})})
    mon.emit("stage_end", STAGE, cfg.train.steps, state="finished", final_path=str(final))
    return "finished"
