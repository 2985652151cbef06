"""GRPO (DeepSeekMath's group-relative policy optimisation), with RLOO and REINFORCE++ advantages.

One iteration = one `run_loop` step:
1. generation: `prompts_per_step` prompts x `group_size` completions (KV-cached sampler);
2. scoring: the reward sources, summed with their weights;
3. advantages per completion from its group (`grpo.advantage`, `grpo.scale_rewards`); groups with
   zero reward variance are counted and, with `drop_zero_variance`, left out of the update;
4. old / reference log-probs, only when needed: old ones when the batch is reused (`num_iterations`
   > 1 or several `minibatches`; else the ratio is exactly 1 and the gradient is -A * grad log p),
   reference ones when `beta` > 0 (k3 KL added to the per-token loss, as TRL does);
5. update: `num_iterations` passes over the batch in `minibatches` optimizer steps, each split
   into `grad_accum` micro-batches; the per-token clipped loss (clip 1 - epsilon, 1 + epsilon_high)
   is aggregated by `loss_type` over the whole minibatch (`dswb.engine.rl.losses.loss_weights`).
Kept from the paper: group normalisation, clipped ratio, k3 KL. Differences, as in TRL: beta 0 by
default (no reference model), token-level "dapo" aggregation by default, truncated completions
optionally masked. Under DDP each rank generates its share of the prompts; advantages and loss
normalisers are computed over every rank's rows (`dswb.engine.rl.global_batch`), so the update is the
one-process update on the same global batch (with `minibatches = 1`; with more, each global
minibatch is the union of the ranks' k-th parts).
"""

from __future__ import annotations

import math
import time

import torch

from dswb.engine.context import StageContext
from dswb.engine.train.loop import StepOutput
from dswb.engine.train.optim import build_optimizer
from dswb.engine.rl.global_batch import global_advantages, global_all, global_sum, micro_plan, split_minibatches
from dswb.engine.distributed.wrap import grad_scale
from dswb.engine.rl.advantages import group_advantages, zero_std_groups
from dswb.engine.rl.losses import clipped_policy_loss, kl_per_token, loss_weights
from dswb.engine.rl.rollout import sequence_logprobs
from dswb.engine.stages.rl_common import (chunks, experience_metrics, iteration_end, make_experience, resume_rl,
                                          rollout_sampler, run_rl_loop, setup)
from dswb.engine.train.prepare import prepare_model

STAGE = "grpo"
SKIP_ZERO_ADVANTAGE = True   # an exact saving (see the step); tests switch it off to compare


def run(ctx: StageContext) -> str:
    cfg, sec, mon = ctx.config, ctx.config.grpo, ctx.monitor
    rl = setup(ctx, STAGE, sec, need_ref=sec.beta > 0)
    policy = rl.policy = prepare_model(rl.policy, cfg, ctx.device, placement=rl.placement)
    optimizer = build_optimizer(policy, sec, ctx.device)
    start_step, state = resume_rl(ctx, STAGE, policy, optimizer, rl)
    sampler = rollout_sampler(ctx, rl, policy, sec)
    pad_id = rl.tokenizer.pad_token_id
    G = sec.group_size
    mon.emit("stage_start", STAGE, start_step, total_steps=sec.steps,
             model={"params": sum(p.numel() for p in policy.parameters()), "source": str(rl.start.path),
                    "layers": getattr(policy.config, "num_hidden_layers", 0),
                    "hidden": getattr(policy.config, "hidden_size", 0), "vocab": len(rl.tokenizer)},
             data={"prompts": len(rl.prompts), "val_prompts": len(rl.val_prompts), "rewards": rl.reward.names,
                   "completions_per_step": sec.prompts_per_step * G})
    mon.write_status(force=True, state="running", stage=STAGE, step=start_step, total_steps=sec.steps)
    need_old = sec.num_iterations > 1 or sec.minibatches > 1

    def step(index: int) -> StepOutput:
        exp = make_experience(ctx, rl, sampler, sec, index, G)
        r = exp.rollouts
        timings = exp.timings
        rewards = exp.scores.total
        adv = global_advantages(rewards, lambda everything: group_advantages(everything, G, sec.advantage,
                                                                             sec.scale_rewards))
        zero = zero_std_groups(rewards, G)
        keep_row = ~zero.repeat_interleave(G) if sec.drop_zero_variance else torch.ones(len(r), dtype=torch.bool)
        mask = r.completion_mask.clone()
        if sec.mask_truncated:
            mask[~r.ended] = 0
        rows = [i for i in range(len(r)) if keep_row[i] and mask[i].any()]
        # Without a KL term a zero-advantage row adds nothing to the loss or its gradient, whatever its
        # ratio: it is left out of every forward and backward (it still counts in the normalisers, so
        # the update is exactly the one over all rows).
        skip = SKIP_ZERO_ADVANTAGE and rl.ref is None
        active = {i for i in rows if float(adv[i]) != 0.0} if skip else set(rows)
        scored = [i for i in rows if i in active]

        t0 = time.perf_counter()
        ids, mask, adv = r.completion_ids.to(ctx.device), mask.to(ctx.device), adv.to(ctx.device)
        old_logp = ref_logp = None
        if scored and (need_old or rl.ref is not None):
            with torch.no_grad():
                if need_old:
                    old_logp = _logprobs(policy, r, scored, ids, mask, sec.temperature, ctx, pad_id)
                if rl.ref is not None:
                    ref_logp = _logprobs(rl.ref, r, scored, ids, mask, sec.temperature, ctx, pad_id)
        timings["ref_logprobs"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        acc = _Accumulator()
        position = {row: k for k, row in enumerate(scored)}   # row -> index into old/ref log-prob tensors
        grad_norms = []
        scale = grad_scale()   # DDP averages gradients over ranks; the weights below are global already
        for _ in range(sec.num_iterations):
            for minibatch in split_minibatches(rows, sec.minibatches):
                total_tokens = int(global_sum(int(mask[minibatch].sum())))
                total_seqs = int(global_sum(len(minibatch)))
                work = [i for i in minibatch if i in active]
                micros = micro_plan(chunks(work, sec.grad_accum) if work else [])
                if not micros:   # no signal anywhere in this minibatch: the optimizer still steps, on zero gradients
                    for p in policy.parameters():
                        if p.requires_grad:
                            p.grad = torch.zeros_like(p)
                for micro in micros:
                    if micro is None:   # another rank has more micro-batches: a pass that adds nothing
                        _zero_weight_pass(policy, r, ids, sec.temperature, ctx, pad_id)
                        continue
                    width = int(mask[micro].sum(dim=1).max())
                    logp, entropy = sequence_logprobs(policy, [r.prompt_ids[i] for i in micro], ids[micro, :width],
                                                      mask[micro, :width], sec.temperature, ctx.amp_dtype, pad_id)
                    m = mask[micro, :width]
                    pos = [position[i] for i in micro]
                    old = old_logp[pos, :width] if old_logp is not None else logp.detach()
                    terms = clipped_policy_loss(logp, old, adv[micro], sec.epsilon, sec.epsilon_high)
                    per_token = terms["loss"]
                    kl = None
                    if ref_logp is not None:
                        kl = kl_per_token(logp, ref_logp[pos, :width], sec.kl_estimator)
                        per_token = per_token + sec.beta * kl
                    w = loss_weights(m, sec.loss_type, total_seqs, total_tokens, sec.max_new_tokens)
                    loss = (w * per_token).sum()
                    (loss * scale).backward()
                    acc.add(loss, terms, entropy, kl, logp, old, m)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), sec.clip_grad or float("inf")))
                grad_norms.append(grad_norm)
                if math.isfinite(grad_norm) and global_all(acc.finite):
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                acc.updates += 1
        timings["update"] = time.perf_counter() - t0

        metrics = experience_metrics(exp)
        metrics.update(acc.metrics())
        metrics["frac_reward_zero_std"] = float(zero.float().mean())
        metrics["grad_norm"] = max(grad_norms) if grad_norms else 0.0
        metrics["rows_trained"] = len(scored)
        for phase, seconds in timings.items():
            metrics[f"timing/{phase}_s"] = seconds
        completion_tokens = int(r.lengths.sum())
        metrics["completion_tokens_per_s"] = completion_tokens / max(timings["generation"], 1e-9)
        iteration_end(ctx, STAGE, index + 1, rl, sec, metrics, state, exp, adv.cpu)
        finite = global_all(acc.finite) and all(math.isfinite(g) for g in grad_norms)
        loss_value = global_sum(acc.loss) / max(1, acc.updates)   # the ranks' parts of one global loss
        return StepOutput(loss=loss_value, finite=finite, metrics=metrics,
                          tokens=completion_tokens + sum(len(p) for p in r.prompt_ids))

    return run_rl_loop(ctx, STAGE, model=policy, policy=policy, optimizer=optimizer, step=step, section=sec, rl=rl,
                       start_step=start_step, state=state)


def _zero_weight_pass(policy, r, ids, temperature, ctx, pad_id) -> None:
    """A forward and backward of one row with weight 0: the gradient is unchanged, but DDP's
    all-reduce of this backward pass meets the other ranks' (`dswb.engine.rl.global_batch`)."""
    logp, _ = sequence_logprobs(policy, [r.prompt_ids[0]], ids[:1, :1], torch.ones_like(ids[:1, :1]), temperature,
                                ctx.amp_dtype, pad_id)
    (logp.sum() * 0.0).backward()


def _logprobs(model, r, rows, ids, mask, temperature, ctx, pad_id) -> torch.Tensor:
    """`[len(rows), T]` log-probs of the given rows' completions under `model` (no grad)."""
    model_device = next(model.parameters()).device
    logp, _ = sequence_logprobs(model, [r.prompt_ids[i] for i in rows], ids[rows].to(model_device),
                                mask[rows].to(model_device), temperature, ctx.amp_dtype, pad_id)
    return logp.to(ids.device)


class _Accumulator:
    """Token-weighted sums of the update's diagnostics over every micro-batch of an iteration."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.sums = {"entropy": 0.0, "clip_low": 0.0, "clip_high": 0.0, "ratio": 0.0, "approx_kl": 0.0, "kl": 0.0}
        self.ratio_max = 0.0
        self.has_kl = False
        self.loss = 0.0
        self.updates = 0
        self.finite = True

    def add(self, loss, terms, entropy, kl, logp, old, mask) -> None:
        m = mask.to(torch.float32)
        n = float(m.sum())
        value = float(loss.detach())
        if not math.isfinite(value):
            self.finite = False
        self.loss += value
        self.tokens += n
        self.sums["entropy"] += float((entropy.detach() * m).sum())
        self.sums["clip_low"] += float((terms["clipped_low"] * m).sum())
        self.sums["clip_high"] += float((terms["clipped_high"] * m).sum())
        ratio = terms["ratio"].detach()
        self.sums["ratio"] += float((ratio * m).sum())
        self.sums["approx_kl"] += float((0.5 * (logp.detach() - old) ** 2 * m).sum())
        if n:
            self.ratio_max = max(self.ratio_max, float((ratio * m).max()))
        if kl is not None:
            self.has_kl = True
            self.sums["kl"] += float((kl.detach() * m).sum())

    def loss_value(self) -> float:
        """Mean loss per optimizer step."""
        return self.loss / max(1, self.updates)

    def metrics(self) -> dict:
        n = max(self.tokens, 1.0)
        out = {"entropy": self.sums["entropy"] / n, "clip_ratio/low": self.sums["clip_low"] / n,
               "clip_ratio/high": self.sums["clip_high"] / n,
               "clip_ratio": (self.sums["clip_low"] + self.sums["clip_high"]) / n,
               "ratio_mean": self.sums["ratio"] / n, "ratio_max": self.ratio_max,
               "approx_kl": self.sums["approx_kl"] / n}
        if self.has_kl:
            out["kl"] = self.sums["kl"] / n
        return out
