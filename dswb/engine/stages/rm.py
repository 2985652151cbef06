"""Reward modelling: a scalar head on the base model, trained on preference pairs (Bradley-Terry).

The model is `AutoModelForSequenceClassification` (num_labels = 1) built from the starting causal
LM: its backbone, and a new `score` head. The reward of a sequence is the head's output at its last
token (the eos after the completion). Loss: `-log sigmoid(r_chosen - r_rejected - margin)` plus an
optional centering term. Metrics: accuracy, margin, mean chosen/rejected reward. Evaluation: pair
accuracy on held-out pairs, split into near-miss and random negatives for the built-in task.
The final model loads with `AutoModelForSequenceClassification.from_pretrained`. In a distributed
run rank r trains on micro-batches r, r + R, ... of the one pair stream (the same pairs per rank, so
the ranks' averaged gradients are the one-process gradient over all of them).
"""

from __future__ import annotations

import math

import torch

from dswb.engine.context import StageContext
from dswb.engine.data.records.chat import install_chat_template
from dswb.engine.data.records.posttrain import read_preferences, split_records, task_preferences
from dswb.engine.data.records.tokenizer import load_tokenizer
from dswb.engine.model.device import autocast
from dswb.engine.train.loop import LoopParts, StepOutput, run_loop
from dswb.engine.train.optim import build_optimizer
from dswb.engine.data.batches.pairs import EncodedPair, PairStream, collate_pairs, encode_pair, margins, scalar_scores
from dswb.engine.preference.losses import reward_model_loss
from dswb.engine.stages.common import (TaskData, eval_every, fit_vocab, load_scalar_model, resolve_init, resume,
                                       task_info)
from dswb.engine.checkpoint.dcp import save_final_model
from dswb.engine.distributed.sharding import shard_pairs
from dswb.engine.train.prepare import model_hooks, prepare_model

STAGE = "rm"
MAX_EVAL_PAIRS = 2000


def pair_rewards(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, ctx: StageContext,
                 max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate_pairs(pairs, pad_id, max_len).to(ctx.device)
    with autocast(ctx.device, ctx.amp_dtype):
        scores = scalar_scores(model, batch.input_ids, batch.attention_mask)
    return scores[:len(pairs)], scores[len(pairs):]


def mean_pair_length(pairs: list[EncodedPair]) -> float:
    return sum(len(p.chosen) + len(p.rejected) for p in pairs) / max(1, 2 * len(pairs))


@torch.no_grad()
def pair_accuracy(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, ctx: StageContext,
                  batch_size: int = 256, prefix: str = "") -> dict:
    """Share of pairs whose chosen side scores higher: all, and per kind of negative when known."""
    if not pairs:
        return {}
    was_training = model.training
    model.eval()
    wins: list[bool] = []
    try:
        for start in range(0, len(pairs), batch_size):
            rc, rr = pair_rewards(model, pairs[start:start + batch_size], pad_id, ctx)
            wins.extend((rc > rr).tolist())
    finally:
        model.train(was_training)
    out = {f"{prefix}pair_acc": sum(wins) / len(wins)}
    for kind in ("near", "random"):
        picked = [w for w, p in zip(wins, pairs) if p.kind == kind]
        if picked:
            out[f"{prefix}pair_acc_{kind}"] = sum(picked) / len(picked)
    return out


def load_pairs(ctx: StageContext, section, stage: str, tokenizer) -> tuple[list[EncodedPair], list[EncodedPair],
                                                                         list[EncodedPair], bool]:
    """(train, val, test, is_chat) encoded pairs: the built-in task's splits, or `data` files split by
    `val_fraction` (no test split)."""
    cfg = ctx.config
    if cfg.data.source == "task" and not section.data:
        td = TaskData.from_config(cfg)
        make = lambda examples, salt: task_preferences(td.task, examples, section.near_fraction, cfg.run.seed + salt)  # noqa: E731
        records = make(td.splits.train, 0), make(td.splits.val, 1), make(td.splits.test, 2)
    else:
        train, val = split_records(read_preferences(section.data, f"{stage}.data"), section.val_fraction, cfg.run.seed)
        records = train, val, []
    is_chat = bool(records[0]) and records[0][0].is_chat
    if is_chat and install_chat_template(tokenizer, "auto"):
        ctx.monitor.log(f"added chat tokens; vocabulary now {len(tokenizer)}", stage=stage)
    train, val, test = ([encode_pair(tokenizer, r) for r in part] for part in records)
    return train, val, test, is_chat


def run(ctx: StageContext) -> str:
    cfg, sec, mon = ctx.config, ctx.config.rm, ctx.monitor
    start = resolve_init(ctx, STAGE, sec.init, "rm.init")
    tokenizer = load_tokenizer(start.path, "rm.init")
    torch.manual_seed(cfg.run.seed)
    model = load_scalar_model(start.path, "rm.init")
    train, val, test, is_chat = load_pairs(ctx, sec, STAGE, tokenizer)
    fit_vocab(model, tokenizer)
    model = prepare_model(model, cfg, ctx.device)
    optimizer = build_optimizer(model, sec, ctx.device)
    stream = shard_pairs(PairStream(len(train), sec.batch_size, cfg.run.seed))
    start_step, state = resume(ctx, STAGE, model, optimizer)
    if "data" in state:
        stream.load_state_dict(state.pop("data"))
    pad_id = tokenizer.pad_token_id
    mon.emit("stage_start", STAGE, start_step, total_steps=sec.steps,
             model={"params": sum(p.numel() for p in model.parameters()), "source": str(start.path),
                    "layers": getattr(model.config, "num_hidden_layers", 0),
                    "hidden": getattr(model.config, "hidden_size", 0), "vocab": len(tokenizer)},
             data={"train_pairs": len(train), "val_pairs": len(val), "test_pairs": len(test)})
    mon.write_status(force=True, state="running", stage=STAGE, step=start_step, total_steps=sec.steps)

    def step(index: int) -> StepOutput:
        micro = [[train[i] for i in next(stream)] for _ in range(sec.grad_accum)]
        n_pairs = sum(len(m) for m in micro)
        totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "reward_chosen": 0.0, "reward_rejected": 0.0}
        tokens = 0
        for pairs in micro:
            rc, rr = pair_rewards(model, pairs, pad_id, ctx)
            m = margins(pairs)
            loss = reward_model_loss(rc, rr, None if m is None else m.to(rc.device), sec.center_coef)
            (loss * len(pairs) / n_pairs).backward()
            totals["loss"] += float(loss.detach()) * len(pairs)
            rc, rr = rc.detach(), rr.detach()
            totals["accuracy"] += float((rc > rr).float().sum())
            totals["margin"] += float((rc - rr).sum())
            totals["reward_chosen"] += float(rc.sum())
            totals["reward_rejected"] += float(rr.sum())
            tokens += sum(len(p.chosen) + len(p.rejected) for p in pairs)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), sec.clip_grad or float("inf")))
        finite = math.isfinite(totals["loss"]) and math.isfinite(grad_norm)
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        metrics = {k: v / n_pairs for k, v in totals.items() if k != "loss"}
        return StepOutput(loss=totals["loss"] / n_pairs, finite=finite, tokens=tokens,
                          metrics={**metrics, "grad_norm": grad_norm, "batch_size": n_pairs})

    hooks = model_hooks(model, ctx, STAGE, context=mean_pair_length(train))
    parts = LoopParts(stage=STAGE, model=model, optimizer=optimizer, step=step, data_state=stream.state_dict,
                      evaluate=lambda s: pair_accuracy(model, val[:MAX_EVAL_PAIRS], pad_id, ctx),
                      optim=sec, start_step=start_step, state=state, eval_every=eval_every(ctx, sec),
                      metric_sources=hooks.metric_sources, step_hooks=hooks.step_hooks,
                      flops_per_token=hooks.flops_per_token)
    outcome = run_loop(ctx, parts)
    if outcome != "finished":
        return outcome
    steps = parts.end_step
    if test:
        mon.eval(STAGE, steps, pair_accuracy(model, test, pad_id, ctx, prefix="test_"))
    final = save_final_model(ctx.paths.final(STAGE), model, tokenizer,
                       {"stage": STAGE, "step": steps, "run_id": ctx.paths.run_id, "kind": "reward_model",
                        "prompt_format": "chat" if is_chat else "plain", "task": task_info(cfg),
                        "last_eval": mon.status.get("last_eval", {})})
    mon.emit("stage_end", STAGE, steps, state="finished", final_path=str(final))
    return "finished"
