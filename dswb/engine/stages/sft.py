"""Supervised fine-tuning: next-token loss on completions (or assistant turns) only.

setup (starting model, records, template, masks, batches, resume) -> `run_loop` with the LM step
-> held-out test accuracy -> final model. Records are the built-in task's prompt/completion pairs,
or JSONL files (`sft.data`) in plain or chat form. Batches come from the same padded-token batcher
as pretraining (bucketed or packed), with a loss mask per sample. In a distributed run each rank
reads its shard of the batches; a pipeline evaluates through its stages (no task accuracy).
"""

from __future__ import annotations

import time

import torch

from dswb.engine.context import StageContext
from dswb.engine.data.batches.loader import BatchStream
from dswb.engine.data.records.chat import encode_chat, encode_plain, install_chat_template
from dswb.engine.data.records.posttrain import SFTRecord, read_sft, split_records, task_sft
from dswb.engine.data.records.tokenizer import build_char_tokenizer, load_tokenizer
from dswb.engine.distributed.pipeline import pipeline_of
from dswb.engine.distributed.sharding import stream_shard
from dswb.engine.eval.loss import held_out_loss, masked_validation_batches, validation_loss
from dswb.engine.eval.task import generation_budget, task_accuracy
from dswb.engine.model.build import build_model
from dswb.engine.model.load import fit_vocab, load_causal_lm
from dswb.engine.stages.adapters import final_extra, stage_adapters
from dswb.engine.stages.common import (TaskData, accuracy_target, batching_event, begin_stage, describe_model,
                                       eval_every, finish_lm, resolve_init, resume_stream, run_lm_loop)
from dswb.engine.train.mtp import mtp_transforms
from dswb.engine.train.optim import build_optimizer
from dswb.engine.train.prepare import prepare_model
from dswb.errors import UserError

STAGE = "sft"


def encode_records(tokenizer, records: list[SFTRecord], loss_on: str) -> tuple[list[list[int]], list[list[int]]]:
    samples, masks = [], []
    for r in records:
        if r.is_chat:
            ids, mask = encode_chat(tokenizer, r.conversation(), loss_on, where=r.where)
        else:
            ids, mask = encode_plain(tokenizer, r.prompt, r.completion, loss_on)  # type: ignore[arg-type]
        samples.append(ids)
        masks.append(mask)
    return samples, masks


def _start(ctx: StageContext, task: TaskData | None):
    """(model, tokenizer, source, adapters, start directory) from `sft.init`/the run/model.path, else a fresh
    model (seeded; no directory)."""
    cfg = ctx.config
    start = resolve_init(ctx, STAGE, cfg.sft.init, "sft.init", required=False)
    adapters = stage_adapters(cfg, STAGE, start.path if start else None,
                              log=lambda line: ctx.monitor.log(line, stage=STAGE))
    if start is not None:
        tokenizer = load_tokenizer(start.path, "sft.init")
        if adapters is not None:
            model = adapters.load_lm(start.path, "sft.init", ctx.device, ctx.amp_dtype)
            return model, tokenizer, f"{start.path}", adapters, start.path
        return load_causal_lm(start.path, "sft.init"), tokenizer, f"{start.path}", None, start.path
    if cfg.model.tokenizer:
        tokenizer = load_tokenizer(cfg.model.tokenizer, "model.tokenizer")
    elif task is not None:
        tokenizer = build_char_tokenizer(task.task.alphabet, task.task.tags)
    else:
        raise UserError("sft: training from scratch on files needs model.tokenizer (or start from model.path / sft.init)")
    torch.manual_seed(cfg.run.seed)
    model, info = build_model(cfg.model.size, "", tokenizer, cfg.model.max_seq_len)
    return model, tokenizer, f"{info.source} (fresh)", None, None


def run(ctx: StageContext) -> str:
    cfg, sec, mon = ctx.config, ctx.config.sft, ctx.monitor
    task = TaskData.from_config(cfg) if cfg.data.source == "task" and not sec.data else None
    if task is not None:
        train_records, val_records = task_sft(task.splits.train), task_sft(task.splits.val)
    else:
        records = read_sft(sec.data, "sft.data")
        train_records, val_records = split_records(records, sec.val_fraction, cfg.run.seed)
    if sec.max_records and len(train_records) > sec.max_records:
        mon.log(f"training on the first {sec.max_records} of {len(train_records)} records (sft.max_records)", stage=STAGE)
        train_records = train_records[:sec.max_records]
    model, tokenizer, source, adapters, start_dir = _start(ctx, task)
    chat = train_records[0].is_chat
    if chat and install_chat_template(tokenizer, sec.template):
        mon.log(f"added chat tokens; vocabulary now {len(tokenizer)}", stage=STAGE)
    grown = fit_vocab(model, tokenizer)
    prompt_format = "chat" if chat else "plain"
    t0 = time.perf_counter()
    samples, masks = encode_records(tokenizer, train_records, sec.loss_on)
    val_samples, val_masks = encode_records(tokenizer, val_records, sec.loss_on)
    mon.log(f"{len(samples)} train / {len(val_samples)} val records ({prompt_format}), loss on {sec.loss_on}, "
            f"encoded in {time.perf_counter() - t0:.1f}s", stage=STAGE)

    max_len = int(getattr(model.config, "max_position_embeddings", cfg.model.max_seq_len))
    extras = mtp_transforms(cfg, sec.steps, start_dir, adapters is not None,
                            log=lambda line: mon.log(line, stage=STAGE))
    model = prepare_model(model, cfg, ctx.device, adapters=adapters.transform(grown_vocab=grown) if adapters else None,
                          extras=extras)
    optimizer = build_optimizer(model, sec, ctx.device)
    stream = BatchStream(samples, cfg.batching, pad_id=tokenizer.pad_token_id, max_len=max_len, seed=cfg.run.seed,
                         batches_per_step=sec.grad_accum, loss_masks=masks, **stream_shard())
    start_step, state = resume_stream(ctx, STAGE, model, optimizer, stream, adapters)

    lengths = [len(s) for s in samples]
    begin_stage(ctx, STAGE, start_step, sec.steps, model=describe_model(model, len(tokenizer), source),
                data={"train_samples": len(samples), "val_samples": len(val_samples), "train_tokens": sum(lengths),
                      "target_tokens": sum(map(sum, masks)), "prompt_format": prompt_format})
    batching_event(ctx, STAGE, start_step, lengths, stream)

    val = masked_validation_batches(val_samples, val_masks, tokenizer.pad_token_id, cfg.batching.max_tokens,
                                    cfg.eval.max_batches, max_len)
    pipelined = pipeline_of(model) is not None
    n_task = cfg.eval.task_samples if task is not None and not pipelined else 0
    budget = generation_budget(tokenizer, task.task if task else None)

    def evaluate(step: int) -> dict:
        metrics = held_out_loss(model, val, ctx.device, ctx.amp_dtype)
        if n_task:
            prompts, answers = task.val(n_task)
            metrics["task_acc"] = task_accuracy(model, tokenizer, prompts, answers, ctx.device, max_new_tokens=budget,
                                                prompt_format=prompt_format)
        return metrics

    probe = (lambda: validation_loss(model, val[:1], ctx.device, ctx.amp_dtype)["val_loss"]) if val else None
    context = max_len if cfg.batching.mode == "pack" else min(sum(lengths) / max(1, len(lengths)), max_len)
    outcome, end_step = run_lm_loop(ctx, STAGE, model, optimizer, stream, sec, start_step=start_step, state=state,
                                    evaluate=evaluate, probe=probe, context=context, eval_every=eval_every(ctx, sec),
                                    stop_when=accuracy_target(sec))
    if outcome != "finished":
        return outcome

    def test_score() -> dict:
        prompts, answers = task.test()
        return {"test_acc": task_accuracy(model, tokenizer, prompts, answers, ctx.device, max_new_tokens=budget,
                                          prompt_format=prompt_format)}

    return finish_lm(ctx, STAGE, model, tokenizer, end_step, prompt_format,
                     test_score if task and not pipelined else None, extra=final_extra(adapters))
