"""Direct preference optimisation against a frozen reference.

The policy starts from `dpo.init` (default: the run's latest language model); the reference is
`dpo.ref` (default: the same starting model), frozen. With `precompute_ref` the reference's
sequence log-probs of every pair are computed once before training and the reference is freed.
Loss: sigmoid (with optional label smoothing) or IPO on length-averaged log-probs
(`dswb.engine.preference.losses.dpo_loss`). Metrics as TRL names them: `rewards/chosen`,
`rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`. In a distributed run
every rank holds the reference log-probs of every pair and trains on its share of the micro-batches
(as the reward model does).
"""

from __future__ import annotations

import math

import torch

from dswb.engine.context import StageContext
from dswb.engine.data.records.tokenizer import load_tokenizer
from dswb.engine.model.device import autocast
from dswb.engine.train.loop import LoopParts, StepOutput, run_loop
from dswb.engine.train.optim import build_optimizer
from dswb.engine.data.batches.pairs import EncodedPair, PairStream, collate_pairs
from dswb.engine.distributed.sharding import shard_pairs
from dswb.engine.preference.losses import dpo_loss, sequence_logprobs
from dswb.engine.stages.common import (TaskData, accuracy_target, eval_every, finish_lm, fit_vocab, load_causal_lm,
                                       resolve_init, resume)
from dswb.engine.stages.rm import load_pairs, mean_pair_length
from dswb.engine.eval.task import task_accuracy
from dswb.engine.train.prepare import model_hooks, prepare_model

STAGE = "dpo"
REF_BATCH = 256


def pair_logprobs(model: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, ctx: StageContext,
                  average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) completion log-probs `[B]`: summed, or averaged per token (IPO)."""
    batch = collate_pairs(pairs, pad_id).to(ctx.device)
    with autocast(ctx.device, ctx.amp_dtype):
        logits = model(**batch.model_inputs()).logits
    total, count = sequence_logprobs(logits, batch.labels)
    if average:
        total = total / count.clamp(min=1)
    return total[:len(pairs)], total[len(pairs):]


@torch.no_grad()
def reference_logprobs(ref: torch.nn.Module, pairs: list[EncodedPair], pad_id: int, ctx: StageContext,
                       average: bool) -> torch.Tensor:
    """`[N, 2]` reference log-probs (chosen, rejected) of every pair, in order."""
    ref.eval()
    out = []
    for start in range(0, len(pairs), REF_BATCH):
        c, r = pair_logprobs(ref, pairs[start:start + REF_BATCH], pad_id, ctx, average)
        out.append(torch.stack([c, r], dim=1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 2)


@torch.no_grad()
def preference_accuracy(policy, ref_lp: torch.Tensor, pairs: list[EncodedPair], pad_id: int, ctx: StageContext,
                        average: bool) -> float:
    """Share of pairs whose implicit reward prefers the chosen side."""
    if not pairs:
        return float("nan")
    was_training = policy.training
    policy.eval()
    wins = 0
    try:
        for start in range(0, len(pairs), REF_BATCH):
            c, r = pair_logprobs(policy, pairs[start:start + REF_BATCH], pad_id, ctx, average)
            ref = ref_lp[start:start + len(c)].to(c.device)
            wins += int(((c - ref[:, 0]) > (r - ref[:, 1])).sum())
    finally:
        policy.train(was_training)
    return wins / len(pairs)


def run(ctx: StageContext) -> str:
    cfg, sec, mon = ctx.config, ctx.config.dpo, ctx.monitor
    start = resolve_init(ctx, STAGE, sec.init, "dpo.init")
    ref_start = resolve_init(ctx, STAGE, sec.ref, "dpo.ref") if sec.ref else start
    tokenizer = load_tokenizer(start.path, "dpo.init")
    policy = load_causal_lm(start.path, "dpo.init")
    train, val, _, is_chat = load_pairs(ctx, sec, STAGE, tokenizer)
    fit_vocab(policy, tokenizer)
    prompt_format = "chat" if is_chat else "plain"
    average = sec.loss == "ipo"
    pad_id = tokenizer.pad_token_id

    ref = load_causal_lm(ref_start.path, "dpo.ref")
    fit_vocab(ref, tokenizer)
    ref = ref.to(ctx.device).eval().requires_grad_(False)
    mon.log(f"reference log-probs of {len(train) + len(val)} pairs", stage=STAGE)
    ref_train = reference_logprobs(ref, train, pad_id, ctx, average)
    ref_val = reference_logprobs(ref, val, pad_id, ctx, average)
    if sec.precompute_ref:
        del ref
        ref = None

    policy = prepare_model(policy, cfg, ctx.device)
    optimizer = build_optimizer(policy, sec, ctx.device)
    stream = shard_pairs(PairStream(len(train), sec.batch_size, cfg.run.seed))
    start_step, state = resume(ctx, STAGE, policy, optimizer)
    if "data" in state:
        stream.load_state_dict(state.pop("data"))
    mon.emit("stage_start", STAGE, start_step, total_steps=sec.steps,
             model={"params": sum(p.numel() for p in policy.parameters()), "source": str(start.path),
                    "layers": getattr(policy.config, "num_hidden_layers", 0),
                    "hidden": getattr(policy.config, "hidden_size", 0), "vocab": len(tokenizer)},
             data={"train_pairs": len(train), "val_pairs": len(val), "reference": str(ref_start.path)})
    mon.write_status(force=True, state="running", stage=STAGE, step=start_step, total_steps=sec.steps)

    def step(index: int) -> StepOutput:
        micro = [next(stream) for _ in range(sec.grad_accum)]
        n_pairs = sum(len(m) for m in micro)
        sums = {"rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/accuracies": 0.0, "rewards/margins": 0.0,
                "logps/chosen": 0.0, "logps/rejected": 0.0}
        loss_total, tokens = 0.0, 0
        for idx in micro:
            pairs = [train[i] for i in idx]
            c, r = pair_logprobs(policy, pairs, pad_id, ctx, average)
            if ref is None:
                ref_lp = ref_train[idx].to(c.device)
            else:
                with torch.no_grad():
                    rc, rr = pair_logprobs(ref, pairs, pad_id, ctx, average)
                ref_lp = torch.stack([rc, rr], dim=1)
            out = dpo_loss(c, r, ref_lp[:, 0], ref_lp[:, 1], sec.beta, sec.loss, sec.label_smoothing)
            loss_sum = out["losses"].sum()
            (loss_sum / n_pairs).backward()
            loss_total += float(loss_sum.detach())
            sums["rewards/chosen"] += float(out["chosen_rewards"].sum())
            sums["rewards/rejected"] += float(out["rejected_rewards"].sum())
            sums["rewards/accuracies"] += float((out["chosen_rewards"] > out["rejected_rewards"]).float().sum())
            sums["rewards/margins"] += float((out["chosen_rewards"] - out["rejected_rewards"]).sum())
            sums["logps/chosen"] += float(c.detach().sum())
            sums["logps/rejected"] += float(r.detach().sum())
            tokens += sum(len(p.chosen) + len(p.rejected) for p in pairs)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), sec.clip_grad or float("inf")))
        finite = math.isfinite(loss_total) and math.isfinite(grad_norm)
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return StepOutput(loss=loss_total / n_pairs, finite=finite, tokens=tokens,
                          metrics={**{k: v / n_pairs for k, v in sums.items()}, "grad_norm": grad_norm,
                                   "batch_size": n_pairs})

    td = TaskData.from_config(cfg) if cfg.data.source == "task" and not sec.data else None

    def evaluate(step: int) -> dict:
        metrics = {"val_rewards/accuracies": preference_accuracy(policy, ref_val, val, pad_id, ctx, average)}
        if td is not None and cfg.eval.task_samples:
            prompts, answers = td.val(cfg.eval.task_samples)
            metrics["task_acc"] = task_accuracy(policy, tokenizer, prompts, answers, ctx.device,
                                                prompt_format=prompt_format)
        return metrics

    hooks = model_hooks(policy, ctx, STAGE, context=mean_pair_length(train))
    parts = LoopParts(stage=STAGE, model=policy, optimizer=optimizer, step=step, data_state=stream.state_dict,
                      evaluate=evaluate, optim=sec, start_step=start_step, state=state, eval_every=eval_every(ctx, sec),
                      stop_when=accuracy_target(sec),
                      metric_sources=hooks.metric_sources, step_hooks=hooks.step_hooks,
                      flops_per_token=hooks.flops_per_token)
    outcome = run_loop(ctx, parts)
    if outcome != "finished":
        return outcome

    def test_score() -> dict:
        prompts, answers = td.test()
        return {"test_acc": task_accuracy(policy, tokenizer, prompts, answers, ctx.device, prompt_format=prompt_format)}

    return finish_lm(ctx, STAGE, policy, tokenizer, parts.end_step, prompt_format, test_score if td else None,
                     extra={"reference": str(ref_start.path)})
