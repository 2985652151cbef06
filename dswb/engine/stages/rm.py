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
from dswb.engine.data.batches.pairs import EncodedPair, PairStream, margins, mean_pair_length
from dswb.engine.data.records.tokenizer import load_tokenizer
from dswb.engine.distributed.sharding import shard_pairs
from dswb.engine.eval.pairs import pair_accuracy
from dswb.engine.model.load import fit_vocab, load_scalar_model
from dswb.engine.moe.share import loss_share
from dswb.engine.preference.losses import reward_model_loss
from dswb.engine.preference.scoring import pair_rewards
from dswb.engine.stages.adapters import final_extra, stage_adapters
from dswb.engine.stages.common import (begin_stage, describe_model, eval_every, finish_lm, load_pairs, resolve_init,
                                       resume, run_stage_loop)
from dswb.engine.train.loop import StepOutput
from dswb.engine.train.optim import build_optimizer
from dswb.engine.train.prepare import prepare_model
from dswb.engine.train.step import guarded_update

STAGE = "rm"
MAX_EVAL_PAIRS = 2000


def reward_backward(model: torch.nn.Module, micro: list[list[EncodedPair]], pad_id: int, device: torch.device,
                    amp_dtype, center_coef: float) -> tuple[float, dict, int]:
    """Forward and backward of every micro-batch of pairs, pair-weighted over the step: the gradient of
    the mean pair loss. Returns (that loss, the step's metrics, tokens processed)."""
    n_pairs = sum(len(m) for m in micro)
    totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "reward_chosen": 0.0, "reward_rejected": 0.0}
    tokens = 0
    for pairs in micro:
        with loss_share(len(pairs) / n_pairs):
            rc, rr = pair_rewards(model, pairs, pad_id, device, amp_dtype)
        m = margins(pairs)
        loss = reward_model_loss(rc, rr, None if m is None else m.to(rc.device), center_coef)
        (loss * len(pairs) / n_pairs).backward()
        totals["loss"] += float(loss.detach()) * len(pairs)
        rc, rr = rc.detach(), rr.detach()
        totals["accuracy"] += float((rc > rr).float().sum())
        totals["margin"] += float((rc - rr).sum())
        totals["reward_chosen"] += float(rc.sum())
        totals["reward_rejected"] += float(rr.sum())
        tokens += sum(len(p.chosen) + len(p.rejected) for p in pairs)
    metrics = {k: v / n_pairs for k, v in totals.items() if k != "loss"}
    return totals["loss"] / n_pairs, {**metrics, "batch_size": n_pairs}, tokens


def run(ctx: StageContext) -> str:
    cfg, sec = ctx.config, ctx.config.rm
    start = resolve_init(ctx, STAGE, sec.init, "rm.init")
    tokenizer = load_tokenizer(start.path, "rm.init")
    torch.manual_seed(cfg.run.seed)
    adapters = stage_adapters(cfg, STAGE, start.path, reward=True)
    if adapters is not None:
        model = adapters.load_scalar(start.path, "rm.init", ctx.device, role="reward", amp_dtype=ctx.amp_dtype)
    else:
        model = load_scalar_model(start.path, "rm.init")
    train, val, test, is_chat = load_pairs(ctx, sec, STAGE, tokenizer)
    grown = fit_vocab(model, tokenizer)
    model = prepare_model(model, cfg, ctx.device,
                          adapters=adapters.transform("reward", grown_vocab=grown) if adapters else None)
    optimizer = build_optimizer(model, sec, ctx.device)
    stream = shard_pairs(PairStream(len(train), sec.batch_size, cfg.run.seed))
    start_step, state = resume(ctx, STAGE, model, optimizer, adapters)
    if "data" in state:
        stream.load_state_dict(state.pop("data"))
    pad_id = tokenizer.pad_token_id
    begin_stage(ctx, STAGE, start_step, sec.steps, model=describe_model(model, len(tokenizer), str(start.path)),
                data={"train_pairs": len(train), "val_pairs": len(val), "test_pairs": len(test)})

    def step(index: int) -> StepOutput:
        micro = [[train[i] for i in next(stream)] for _ in range(sec.grad_accum)]
        loss, metrics, tokens = reward_backward(model, micro, pad_id, ctx.device, ctx.amp_dtype, sec.center_coef)
        grad_norm, _ = guarded_update(optimizer, model.parameters(), sec.clip_grad, math.isfinite(loss))
        return StepOutput(loss=loss, finite=math.isfinite(loss) and math.isfinite(grad_norm), tokens=tokens,
                          metrics={**metrics, "grad_norm": grad_norm})

    outcome, end_step = run_stage_loop(
        ctx, STAGE, model, optimizer, step, sec, start_step=start_step, state=state, data_state=stream.state_dict,
        evaluate=lambda s: pair_accuracy(model, val[:MAX_EVAL_PAIRS], pad_id, ctx.device, ctx.amp_dtype),
        context=mean_pair_length(train), eval_every=eval_every(ctx, sec))
    if outcome != "finished":
        return outcome

    def test_score() -> dict:
        return pair_accuracy(model, test, pad_id, ctx.device, ctx.amp_dtype, prefix="test_")

    return finish_lm(ctx, STAGE, model, tokenizer, end_step, "chat" if is_chat else "plain",
                     test_score if test else None, extra=final_extra(adapters, kind="reward_model"))
