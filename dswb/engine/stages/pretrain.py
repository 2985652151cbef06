"""Pretraining: next-token prediction on the run's corpus (or the built-in task's text).

setup (data, tokenizer, model, optimizer, batches, resume) -> `run_lm_loop` -> final model.
In a distributed run rank 0 prepares the data cache first, each rank reads its shard of the batches,
and a pipeline evaluates through its stages (no task accuracy: a pipeline cannot generate).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dswb.engine.context import StageContext
from dswb.engine.data.batches.loader import BatchStream
from dswb.engine.data.corpus.events import progress_events, publish_report
from dswb.engine.data.corpus.pipeline import PreparedData, prepare_data
from dswb.engine.data.corpus.prepare import PreparationStopped
from dswb.engine.distributed.pipeline import pipeline_of
from dswb.engine.distributed.sharding import stream_shard
from dswb.engine.distributed.world import active
from dswb.engine.eval.loss import held_out_loss, validation_batches, validation_loss
from dswb.engine.eval.task import generation_budget, task_accuracy
from dswb.engine.model.build import build_model
from dswb.engine.model.load import fit_vocab
from dswb.engine.stages.adapters import final_extra, stage_adapters
from dswb.engine.stages.common import batching_event, begin_stage, describe_model, finish_lm, resume_stream, run_lm_loop
from dswb.engine.train.mtp import mtp_transforms
from dswb.engine.train.optim import build_optimizer
from dswb.engine.train.prepare import prepare_model

STAGE = "pretrain"


def prepare(ctx: StageContext) -> PreparedData | None:
    """The prepared corpus (rank 0 fills the cache first in a distributed run); None when stopped."""
    cfg, mon, world = ctx.config, ctx.monitor, active()
    mon.log("preparing data", stage=STAGE)
    t0 = time.perf_counter()

    def prepare_with(control):
        return prepare_data(cfg, ctx.cache_root, lambda msg: mon.log(msg, stage=STAGE),
                            progress=progress_events(mon, STAGE, control))
    try:
        if world is None:
            data = prepare_with(ctx.control)
        else:   # rank 0 fills the cache (stoppable alone), then the other ranks read it
            data = world.main_first(lambda: prepare_with(ctx.control.local if world.is_main else None),
                                    passthrough=(PreparationStopped,))
    except PreparationStopped:
        mon.log("data preparation stopped; it resumes from its last complete shard", stage=STAGE)
        return None
    if world is None or world.is_main:
        publish_report(mon, STAGE, ctx.paths.root, data.stats)
    mon.log(f"data ready in {time.perf_counter() - t0:.1f}s: {data.stats.get('train_samples')} train / "
            f"{data.stats.get('val_samples')} val samples", stage=STAGE)
    return data


def run(ctx: StageContext) -> str:
    cfg = ctx.config
    data = prepare(ctx)
    if data is None:
        return "stopped"
    torch.manual_seed(cfg.run.seed)
    adapters = stage_adapters(cfg, STAGE, Path(cfg.model.path).expanduser() if cfg.model.path else None,
                              log=lambda line: ctx.monitor.log(line, stage=STAGE))
    grown = False
    if adapters is not None:    # continued pretraining of a trained model, on adapters
        model = adapters.load_lm(adapters.base, "model.path", ctx.device, ctx.amp_dtype)
        grown = fit_vocab(model, data.tokenizer)
    model, info = build_model(cfg.model.size, cfg.model.path, data.tokenizer, cfg.model.max_seq_len,
                              model=model if adapters is not None else None)
    start_dir = Path(cfg.model.path).expanduser() if cfg.model.path else None
    extras = mtp_transforms(cfg, cfg.train.steps, start_dir, adapters is not None,
                            log=lambda line: ctx.monitor.log(line, stage=STAGE))
    model = prepare_model(model, cfg, ctx.device, adapters=adapters.transform(grown_vocab=grown) if adapters else None,
                          extras=extras)
    optimizer = build_optimizer(model, cfg.train, ctx.device)
    pad_id = data.tokenizer.pad_token_id
    stream = BatchStream(data.train, cfg.batching, pad_id=pad_id, max_len=cfg.model.max_seq_len, seed=cfg.run.seed,
                         batches_per_step=cfg.train.grad_accum, **stream_shard())
    start_step, state = resume_stream(ctx, STAGE, model, optimizer, stream, adapters)

    lengths = data.train.lengths  # numpy, from the sample store
    begin_stage(ctx, STAGE, start_step, cfg.train.steps,
                model={"params": info.params, "layers": info.layers, "hidden": info.hidden, "vocab": info.vocab,
                       "source": info.source, **({"trainable": describe_model(model, info.vocab, "")["trainable"]}
                                                 if adapters else {})},
                data={**{k: v for k, v in data.stats.items() if k != "report"}, "train_tokens": int(lengths.sum())})
    batching_event(ctx, STAGE, start_step, lengths, stream)

    val = validation_batches(data.val, cfg, pad_id)
    pipelined = pipeline_of(model) is not None
    n_task = cfg.eval.task_samples if data.task is not None and not pipelined else 0
    budget = generation_budget(data.tokenizer, data.task)

    def evaluate(step: int) -> dict:
        metrics = held_out_loss(model, val, ctx.device, ctx.amp_dtype)
        if n_task:
            metrics["task_acc"] = task_accuracy(model, data.tokenizer, data.eval_prompts[:n_task],
                                                data.eval_answers[:n_task], ctx.device, max_new_tokens=budget)
        return metrics

    def test_score() -> dict:
        return {"test_acc": task_accuracy(model, data.tokenizer, data.test_prompts, data.test_answers, ctx.device,
                                          max_new_tokens=budget)}

    probe = (lambda: validation_loss(model, val[:1], ctx.device, ctx.amp_dtype)["val_loss"]) if val else None
    packed = cfg.batching.mode == "pack"
    context = cfg.model.max_seq_len if packed else min(float(lengths.mean()), cfg.model.max_seq_len)
    outcome, end_step = run_lm_loop(ctx, STAGE, model, optimizer, stream, cfg.train, start_step=start_step, state=state,
                                    evaluate=evaluate, probe=probe, context=context)
    if outcome != "finished":
        return outcome
    scored = data.task is not None and data.test_prompts and not pipelined
    return finish_lm(ctx, STAGE, model, data.tokenizer, end_step, "plain", test_score if scored else None,
                     extra=final_extra(adapters))
