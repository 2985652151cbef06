"""PPO for language models, as TRL implements it (ENGINE-NOTES section 2), one readable module.

One iteration = one `run_loop` step:
1. generation: `prompts_per_step` completions at `temperature` (KV-cached sampler);
2. scoring: the reward sources; the sequence score, minus `missing_eos_penalty` for a completion
   that never ended;
3. old log-probs (policy), reference log-probs (frozen starting model) and old values, on the SAME
   sampled tokens; per-token KL (k1 or k3) -> token rewards `-kl_coef * KL`, plus the score on the
   last token; GAE (gamma, lam) -> advantages (whitened) and returns;
4. update: `epochs` passes, each over the batch in a seeded order cut into `minibatches`, each
   minibatch in `grad_accum` micro-batches: clipped policy loss on the ratio of new to old
   log-probs of the same tokens, clipped value loss, total `pg + vf_coef * vf` (token means).
The value model is a scalar head on a backbone (`value_init`: this run's reward model when it has
one, else the policy's backbone with a new head); it trains with the policy, one optimizer.
The final model is the policy alone. Under DDP (policy and value each data parallel) each rank
generates its share of the prompts; the whitening and the token means are over every rank's tokens
(`dswb.engine.rl.global_batch`), so with `minibatches = 1` the update is the one-process update.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from dswb.engine.context import StageContext
from dswb.engine.model.device import autocast
from dswb.engine.train.loop import StepOutput
from dswb.engine.train.optim import build_optimizer
from dswb.engine.rl.global_batch import global_all, global_sum, global_whiten, micro_plan, split_minibatches
from dswb.engine.distributed.wrap import grad_scale
from dswb.engine.rl.advantages import explained_variance, gae
from dswb.engine.rl.losses import clipped_policy_loss, clipped_value_loss, kl_per_token, per_token_rewards
from dswb.engine.rl.rollout import left_pad, positions, sequence_logprobs
from dswb.engine.stages.common import fit_vocab, is_reward_model, load_scalar_model, resolve_init
from dswb.engine.stages.rl_common import (chunks, experience_metrics, iteration_end, iteration_generator,
                                          make_experience, resume_rl, rollout_sampler, run_rl_loop, setup)
from dswb.engine.train.prepare import prepare_model

STAGE = "ppo"


class PolicyAndValue(torch.nn.Module):
    """The two trained models as one module: one optimizer, one checkpoint."""

    def __init__(self, policy: torch.nn.Module, value: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value = value


def sequence_values(value_model: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                    completion_mask: torch.Tensor, amp_dtype=None, pad_id: int = 0) -> torch.Tensor:
    """`[B, T]` values of the state before each completion token (TRL: `value[:, context - 1:-1]`),
    in the sampler's row layout (left-padded prompt, then the completion); 0 where masked."""
    device = completion_ids.device
    ids, prompt_mask = left_pad(prompt_ids, pad_id, device)
    width = completion_ids.shape[1]
    inputs = torch.cat([ids, completion_ids[:, :-1]], 1)
    mask = torch.cat([prompt_mask, completion_mask[:, :-1].long()], 1)
    pos = torch.cat([positions(prompt_mask), prompt_mask.sum(1, keepdim=True) + torch.arange(width - 1, device=device)], 1)
    backbone = getattr(value_model, value_model.base_model_prefix)
    with autocast(device, amp_dtype):
        hidden = backbone(input_ids=inputs, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        values = value_model.score(hidden[:, -width:]).squeeze(-1).float().to(device)
    return values.masked_fill(~completion_mask.bool(), 0.0)


def _zero_weight_pass(policy, value, r, ids, temperature, ctx, pad_id) -> None:
    """A forward and backward of one row through both models with weight 0: gradients unchanged, but
    their DDP all-reduces meet the other ranks' (`dswb.engine.rl.global_batch`)."""
    one, ones = ids[:1, :1], torch.ones_like(ids[:1, :1])
    logp, _ = sequence_logprobs(policy, [r.prompt_ids[0]], one, ones, temperature, ctx.amp_dtype, pad_id)
    values = sequence_values(value, [r.prompt_ids[0]], one, ones, ctx.amp_dtype, pad_id)
    ((logp.sum() + values.sum()) * 0.0).backward()


def value_start(ctx: StageContext, spec: str, policy_path: Path) -> Path:
    """Where the value model starts: `value_init`, else this run's reward model, else the policy."""
    if spec:
        return resolve_init(ctx, STAGE, spec, "ppo.value_init").path
    run_rm = ctx.finals.get("rm")
    if run_rm is not None and is_reward_model(run_rm):
        return run_rm
    return policy_path


def run(ctx: StageContext) -> str:
    cfg, sec, mon = ctx.config, ctx.config.ppo, ctx.monitor
    rl = setup(ctx, STAGE, sec, need_ref=True)
    value_path = value_start(ctx, sec.value_init, rl.start.path)
    torch.manual_seed(cfg.run.seed)
    value = load_scalar_model(value_path, "ppo.value_init")
    fit_vocab(value, rl.tokenizer)
    policy = rl.policy = prepare_model(rl.policy, cfg, ctx.device, placement=rl.placement)
    value = prepare_model(value, cfg, ctx.device, role="value", placement=rl.placement)
    model = PolicyAndValue(policy, value)
    optimizer = build_optimizer(model, sec, ctx.device)
    start_step, state = resume_rl(ctx, STAGE, model, optimizer, rl)
    sampler = rollout_sampler(ctx, rl, policy, sec)
    pad_id = rl.tokenizer.pad_token_id
    mon.log(f"value model from {value_path}", stage=STAGE)
    mon.emit("stage_start", STAGE, start_step, total_steps=sec.steps,
             model={"params": sum(p.numel() for p in policy.parameters()), "source": str(rl.start.path),
                    "value_params": sum(p.numel() for p in value.parameters()), "value_source": str(value_path),
                    "layers": getattr(policy.config, "num_hidden_layers", 0),
                    "hidden": getattr(policy.config, "hidden_size", 0), "vocab": len(rl.tokenizer)},
             data={"prompts": len(rl.prompts), "val_prompts": len(rl.val_prompts), "rewards": rl.reward.names})
    mon.write_status(force=True, state="running", stage=STAGE, step=start_step, total_steps=sec.steps)

    def step(index: int) -> StepOutput:
        exp = make_experience(ctx, rl, sampler, sec, index, 1)
        r, timings = exp.rollouts, exp.timings
        scores = exp.scores.total - sec.missing_eos_penalty * (~r.ended).float()
        ids, mask = r.completion_ids.to(ctx.device), r.completion_mask.to(ctx.device)
        every = list(range(len(r)))

        t0 = time.perf_counter()
        with torch.no_grad():
            old_logp, _ = sequence_logprobs(policy, r.prompt_ids, ids, mask, sec.temperature, ctx.amp_dtype, pad_id)
            ref_device = next(rl.ref.parameters()).device   # the embedding's: inputs go there
            ref_logp, _ = sequence_logprobs(rl.ref, r.prompt_ids, ids.to(ref_device), mask.to(ref_device),
                                            sec.temperature, ctx.amp_dtype, pad_id)
            ref_logp = ref_logp.to(ctx.device)
            old_values = sequence_values(value, r.prompt_ids, ids, mask, ctx.amp_dtype, pad_id)
        kl = kl_per_token(old_logp, ref_logp, sec.kl_estimator) * mask
        token_rewards = per_token_rewards(scores.to(ctx.device), kl, mask, sec.kl_coef)
        advantages, returns = gae(token_rewards, old_values, mask, sec.gamma, sec.lam)
        if sec.whiten_advantages:
            advantages = global_whiten(advantages, mask)
        timings["ref_logprobs"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        order_gen = iteration_generator(cfg.run.seed + 1, index)
        sums = {k: 0.0 for k in ("pg", "vf", "entropy", "clip_low", "clip_high", "vclip", "ratio", "approx_kl")}
        tokens, ratio_max, updates, finite, grad_norms = 0.0, 0.0, 0, True, []
        scale = grad_scale()   # DDP averages gradients over ranks; the token means below are global already
        for _ in range(sec.epochs):
            order = torch.randperm(len(every), generator=order_gen).tolist()
            for minibatch in split_minibatches(order, sec.minibatches):
                total_tokens = global_sum(float(mask[minibatch].sum()))
                for micro in micro_plan(chunks(minibatch, sec.grad_accum) if minibatch else []):
                    if micro is None:   # another rank has more micro-batches: a pass that adds nothing
                        _zero_weight_pass(policy, value, r, ids, sec.temperature, ctx, pad_id)
                        continue
                    width = int(mask[micro].sum(dim=1).max())
                    m = mask[micro, :width].float()
                    prompts = [r.prompt_ids[i] for i in micro]
                    logp, entropy = sequence_logprobs(policy, prompts, ids[micro, :width], mask[micro, :width],
                                                      sec.temperature, ctx.amp_dtype, pad_id)
                    values = sequence_values(value, prompts, ids[micro, :width], mask[micro, :width], ctx.amp_dtype, pad_id)
                    pg = clipped_policy_loss(logp, old_logp[micro, :width], advantages[micro, :width], sec.cliprange)
                    vf = clipped_value_loss(values, old_values[micro, :width], returns[micro, :width], sec.cliprange_value)
                    pg_loss = (pg["loss"] * m).sum() / max(total_tokens, 1.0)
                    vf_loss = (vf["loss"] * m).sum() / max(total_tokens, 1.0)
                    ((pg_loss + sec.vf_coef * vf_loss) * scale).backward()
                    finite &= math.isfinite(float(pg_loss.detach())) and math.isfinite(float(vf_loss.detach()))
                    n = float(m.sum())
                    tokens += n
                    sums["pg"] += float(pg_loss.detach())
                    sums["vf"] += float(vf_loss.detach())
                    sums["entropy"] += float((entropy.detach() * m).sum())
                    sums["clip_low"] += float((pg["clipped_low"] * m).sum())
                    sums["clip_high"] += float((pg["clipped_high"] * m).sum())
                    sums["vclip"] += float((vf["clipped"] * m).sum())
                    ratio = pg["ratio"].detach()
                    sums["ratio"] += float((ratio * m).sum())
                    sums["approx_kl"] += float((0.5 * (logp.detach() - old_logp[micro, :width]) ** 2 * m).sum())
                    ratio_max = max(ratio_max, float((ratio * m).max()))
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), sec.clip_grad or float("inf")))
                grad_norms.append(grad_norm)
                if global_all(finite) and math.isfinite(grad_norm):
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                updates += 1
        timings["update"] = time.perf_counter() - t0

        n = max(tokens, 1.0)
        metrics = experience_metrics(exp)
        metrics.update({
            "score": float(scores.mean()), "kl": float(kl.sum() / mask.sum().clamp(min=1)),
            "non_score_reward": float((-sec.kl_coef * kl).sum(dim=1).mean()),
            "policy_loss": global_sum(sums["pg"]) / max(1, updates), "value_loss": global_sum(sums["vf"]) / max(1, updates),
            "entropy": sums["entropy"] / n, "clip_ratio/low": sums["clip_low"] / n,
            "clip_ratio/high": sums["clip_high"] / n, "clip_ratio": (sums["clip_low"] + sums["clip_high"]) / n,
            "value_clip_ratio": sums["vclip"] / n, "ratio_mean": sums["ratio"] / n, "ratio_max": ratio_max,
            "approx_kl": sums["approx_kl"] / n, "explained_variance": explained_variance(old_values, returns, mask),
            "grad_norm": max(grad_norms) if grad_norms else 0.0,
        })
        for phase, seconds in timings.items():
            metrics[f"timing/{phase}_s"] = seconds
        completion_tokens = int(r.lengths.sum())
        metrics["completion_tokens_per_s"] = completion_tokens / max(timings["generation"], 1e-9)
        iteration_end(ctx, STAGE, index + 1, rl, sec, metrics, state, exp,
                      lambda: ((advantages * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).cpu())
        loss = metrics["policy_loss"] + sec.vf_coef * metrics["value_loss"]
        return StepOutput(loss=loss, finite=global_all(finite) and all(math.isfinite(g) for g in grad_norms), metrics=metrics,
                          tokens=completion_tokens + sum(len(p) for p in r.prompt_ids))

    return run_rl_loop(ctx, STAGE, model=model, policy=policy, optimizer=optimizer, step=step, section=sec, rl=rl,
                       start_step=start_step, state=state, extra={"value_model": str(value_path)})
