"""Direct preference optimisation against a frozen reference.

The policy starts from `dpo.init` (default: the run's latest language model); the reference is
`dpo.ref` (default: the same starting model), frozen. With `precompute_ref` the reference's
sequence log-probs of every pair are computed once before training and the reference is freed.
Loss (`dswb.engine.preference.losses.dpo_loss`): sigmoid, which with `label_smoothing` is
conservative DPO (cDPO); robust, rDPO with `label_smoothing` as the rate of flipped labels; or IPO on
length-averaged log-probs. Metrics as TRL names them: `rewards/chosen`,
`rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`. In a distributed run
every rank holds the reference log-probs of every pair and trains on its share of the micro-batches
(as the reward model does).
"""

from __future__ import annotations

import math

import torch

from dswb.engine.context import StageContext
from dswb.engine.data.batches.pairs import EncodedPair, PairStream, mean_pair_length
from dswb.engine.data.records.tokenizer import load_tokenizer
from dswb.engine.distributed.sharding import shard_pairs
from dswb.engine.eval.pairs import preference_accuracy
from dswb.engine.eval.task import generation_budget, task_accuracy
from dswb.engine.model.load import fit_vocab, load_causal_lm
from dswb.engine.moe.share import loss_share
from dswb.engine.preference.losses import dpo_loss
from dswb.engine.preference.scoring import pair_logprobs, reference_logprobs
from dswb.engine.stages.adapters import final_extra, stage_adapters
from dswb.engine.stages.common import (TaskData, accuracy_target, begin_stage, describe_model, eval_every, finish_lm,
                                       load_pairs, resolve_init, resume, run_stage_loop)
from dswb.engine.train.loop import StepOutput
from dswb.engine.train.optim import build_optimizer
from dswb.engine.train.prepare import prepare_model
from dswb.engine.train.step import guarded_update

STAGE = "dpo"
def dpo_backward(policy: torch.nn.Module, micro: list[torch.Tensor], pairs: list[EncodedPair],
                 ref_lp: torch.Tensor, ref: torch.nn.Module | None, pad_id: int, device: torch.device, amp_dtype,
                 section) -> tuple[float, dict, int]:
    """Forward and backward of every micro-batch (`micro`: pair indices), pair-weighted over the step:
    the gradient of the mean DPO loss. The reference log-probs are `ref_lp[indices]` (precomputed) or
    `ref`'s. Returns (that loss, TRL's metrics, tokens processed)."""
    average = section.loss == "ipo"
    n_pairs = sum(len(m) for m in micro)
    sums = {"rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/accuracies": 0.0, "rewards/margins": 0.0,
            "logps/chosen": 0.0, "logps/rejected": 0.0}
    loss_total, tokens = 0.0, 0
    for idx in micro:
        batch = [pairs[i] for i in idx]
        with loss_share(len(idx) / n_pairs):
            c, r = pair_logprobs(policy, batch, pad_id, device, amp_dtype, average)
        if ref is None:
            ref_batch = ref_lp[idx].to(c.device)
        else:
            with torch.no_grad():
                rc, rr = pair_logprobs(ref, batch, pad_id, device, amp_dtype, average)
            ref_batch = torch.stack([rc, rr], dim=1)
        out = dpo_loss(c, r, ref_batch[:, 0], ref_batch[:, 1], section.beta, section.loss, section.label_smoothing)
        loss_sum = out["losses"].sum()
        (loss_sum / n_pairs).backward()
        loss_total += float(loss_sum.detach())
        chosen, rejected = out["chosen_rewards"], out["rejected_rewards"]
        sums["rewards/chosen"] += float(chosen.sum())
        sums["rewards/rejected"] += float(rejected.sum())
        sums["rewards/accuracies"] += float((chosen > rejected).float().sum())
        sums["rewards/margins"] += float((chosen - rejected).sum())
        sums["logps/chosen"] += float(c.detach().sum())
        sums["logps/rejected"] += float(r.detach().sum())
        tokens += sum(len(p.chosen) + len(p.rejected) for p in batch)
    return loss_total / n_pairs, {**{k: v / n_pairs for k, v in sums.items()}, "batch_size": n_pairs}, tokens


def run(ctx: StageContext) -> str:
    cfg, sec, mon = ctx.config, ctx.config.dpo, ctx.monitor
    start = resolve_init(ctx, STAGE, sec.init, "dpo.init")
    ref_start = resolve_init(ctx, STAGE, sec.ref, "dpo.ref") if sec.ref else start
    tokenizer = load_tokenizer(start.path, "dpo.init")
    adapters = stage_adapters(cfg, STAGE, start.path)
    if adapters is not None:
        policy = adapters.load_lm(start.path, "dpo.init", ctx.device, ctx.amp_dtype)
    else:
        policy = load_causal_lm(start.path, "dpo.init")
    train, val, _, is_chat = load_pairs(ctx, sec, STAGE, tokenizer)
    grown = fit_vocab(policy, tokenizer)
    prompt_format = "chat" if is_chat else "plain"
    average = sec.loss == "ipo"
    pad_id = tokenizer.pad_token_id

    if adapters is not None:     # the policy first: its start, with the adapter off, is the reference
        policy = prepare_model(policy, cfg, ctx.device, adapters=adapters.transform(grown_vocab=grown))
    if adapters is not None and not sec.ref:
        ref = adapters.reference(policy, before_training=sec.precompute_ref)
        how = ("before it trains" if sec.precompute_ref else "with its adapter frozen at its start (a second adapter)"
               if adapters.continued else "with its adapter off")
        mon.log(f"reference: the start model, as the policy {how}", stage=STAGE)
    else:
        ref = load_causal_lm(ref_start.path, "dpo.ref")
        fit_vocab(ref, tokenizer)
        ref = ref.to(ctx.device).eval().requires_grad_(False)
    mon.log(f"reference log-probs of {len(train) + len(val)} pairs", stage=STAGE)
    ref_train = reference_logprobs(ref, train, pad_id, ctx.device, ctx.amp_dtype, average)
    ref_val = reference_logprobs(ref, val, pad_id, ctx.device, ctx.amp_dtype, average)
    if sec.precompute_ref:
        del ref
        ref = None

    if adapters is None:
        policy = prepare_model(policy, cfg, ctx.device)
    optimizer = build_optimizer(policy, sec, ctx.device)
    stream = shard_pairs(PairStream(len(train), sec.batch_size, cfg.run.seed))
    start_step, state = resume(ctx, STAGE, policy, optimizer, adapters)
    if "data" in state:
        stream.load_state_dict(state.pop("data"))
    begin_stage(ctx, STAGE, start_step, sec.steps, model=describe_model(policy, len(tokenizer), str(start.path)),
                data={"train_pairs": len(train), "val_pairs": len(val), "reference": str(ref_start.path)})

    def step(index: int) -> StepOutput:
        micro = [next(stream) for _ in range(sec.grad_accum)]
        loss, metrics, tokens = dpo_backward(policy, micro, train, ref_train, ref, pad_id, ctx.device,
                                             ctx.amp_dtype, sec)
        grad_norm, _ = guarded_update(optimizer, policy.parameters(), sec.clip_grad, math.isfinite(loss))
        return StepOutput(loss=loss, finite=math.isfinite(loss) and math.isfinite(grad_norm), tokens=tokens,
                          metrics={**metrics, "grad_norm": grad_norm})

    td = TaskData.from_config(cfg) if cfg.data.source == "task" and not sec.data else None
    budget = generation_budget(tokenizer, td.task if td else None)

    def evaluate(step: int) -> dict:
        metrics = {"val_rewards/accuracies": preference_accuracy(policy, ref_val, val, pad_id, ctx.device,
                                                                         ctx.amp_dtype, average)}
        if td is not None and cfg.eval.task_samples:
            prompts, answers = td.val(cfg.eval.task_samples)
            metrics["task_acc"] = task_accuracy(policy, tokenizer, prompts, answers, ctx.device, max_new_tokens=budget,
                                                prompt_format=prompt_format)
        return metrics

    outcome, end_step = run_stage_loop(ctx, STAGE, policy, optimizer, step, sec, start_step=start_step, state=state,
                                       data_state=stream.state_dict, evaluate=evaluate, context=mean_pair_length(train),
                                       eval_every=eval_every(ctx, sec), stop_when=accuracy_target(sec))
    if outcome != "finished":
        return outcome

    def test_score() -> dict:
        prompts, answers = td.test()
        return {"test_acc": task_accuracy(policy, tokenizer, prompts, answers, ctx.device, max_new_tokens=budget,
                                          prompt_format=prompt_format)}

    return finish_lm(ctx, STAGE, policy, tokenizer, end_step, prompt_format, test_score if td else None,
                     extra=final_extra(adapters, reference=str(ref_start.path)))
