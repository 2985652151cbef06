"""PPO for language models, TRL's algorithm and defaults (docs/post-training.md), one readable module.

One iteration = one `run_loop` step:
1. generation: `prompts_per_step` completions at `temperature` (KV-cached sampler);
2. scoring: the reward sources; the sequence score, minus `missing_eos_penalty` for a completion
   that never ended; a completion without a score (NaN: unscorable, docs/rewards.md) is left out of
   the loss and of the whitening;
3. old log-probs (policy), reference log-probs (frozen starting model) and old values, on the SAME
   sampled tokens; per-token KL (k1 or k3) -> token rewards `-kl_coef * KL`, plus the score on the
   last completion token (the eos token when it ended), as OpenRLHF places it (TRL adds it one
   token later, on the first padding position, which TRL's issue 3750 reports as a bug); GAE
   (gamma, lam) -> advantages (whitened) and returns;
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
from dataclasses import dataclass
from pathlib import Path

import torch

from dswb.engine.adapters.lora import describe, disable_dropout
from dswb.engine.context import StageContext
from dswb.engine.data.batches.collate import left_pad
from dswb.engine.model.backbone import backbone_of
from dswb.engine.model.device import autocast
from dswb.engine.model.load import fit_vocab, is_reward_model, load_scalar_model
from dswb.engine.rl.advantages import explained_variance, gae
from dswb.engine.rl.global_batch import global_sum, global_whiten
from dswb.engine.rl.losses import (approx_kl_per_token, clipped_policy_loss, clipped_value_loss, kl_per_token,
                                   per_token_rewards)
from dswb.engine.rl.rewards import nan_mean
from dswb.engine.rl.rollout import Rollouts, positions, sequence_logprobs
from dswb.engine.rl.update import MicroLoss, UpdateStats, run_updates
from dswb.engine.stages.adapters import base_dtype
from dswb.engine.stages.common import begin_stage, describe_model, resolve_init
from dswb.engine.stages.rl_common import (experience_metrics, iteration_end, iteration_generator, make_experience,
                                          prepare_policy, resume_rl, rollout_sampler, run_rl_loop, setup)
from dswb.engine.train.loop import StepOutput
from dswb.engine.train.optim import build_optimizer
from dswb.engine.train.prepare import LoraTraining, prepare_model

STAGE = "ppo"


@dataclass
class PPOBatch:
    """An iteration's completions with everything the update needs (on the training device)."""

    rollouts: Rollouts
    ids: torch.Tensor            # [B, T] completion tokens
    mask: torch.Tensor           # [B, T] completion mask
    scores: torch.Tensor         # [B] sequence scores (missing-eos penalty included; NaN: unscorable)
    old_logp: torch.Tensor       # [B, T] under the policy that sampled them
    old_values: torch.Tensor     # [B, T]
    kl: torch.Tensor             # [B, T] per-token KL to the reference (0 where masked)
    advantages: torch.Tensor     # [B, T] GAE, whitened when asked
    returns: torch.Tensor        # [B, T]


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
    backbone = backbone_of(value_model)
    with autocast(device, amp_dtype):
        hidden = backbone(input_ids=inputs, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        values = value_model.score(hidden[:, -width:]).squeeze(-1).float().to(device)
    return values.masked_fill(~completion_mask.bool(), 0.0)


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
    lora = rl.adapters.settings if rl.adapters is not None and rl.adapters.settings.value == "adapter" else None
    value = load_scalar_model(value_path, "ppo.value_init", quantize=lora.quantize if lora else "none",
                              device=ctx.device, dtype=base_dtype(ctx.amp_dtype) if lora else torch.float32)
    grown = fit_vocab(value, rl.tokenizer)
    policy = prepare_policy(ctx, STAGE, rl, need_ref=True)
    value = prepare_model(value, cfg, ctx.device, role="value", placement=rl.placement,
                          adapters=LoraTraining(lora, "value", "ppo.lora", grown) if lora else None)
    if rl.adapters is not None:
        disable_dropout(value)
        mon.log("value: " + (describe(lora, value) if lora else "trained in full (lora.value = 'full')"), stage=STAGE)
    model = PolicyAndValue(policy, value)
    optimizer = build_optimizer(model, sec, ctx.device)
    start_step, state = resume_rl(ctx, STAGE, model, optimizer, rl)
    sampler = rollout_sampler(ctx, rl, policy, sec)
    pad_id = rl.tokenizer.pad_token_id
    mon.log(f"value model from {value_path}", stage=STAGE)
    begin_stage(ctx, STAGE, start_step, sec.steps,
                model=describe_model(policy, len(rl.tokenizer), str(rl.start.path), value_source=str(value_path),
                                     value_params=sum(p.numel() for p in value.parameters())),
                data={"prompts": len(rl.prompts), "val_prompts": len(rl.val_prompts), "rewards": rl.reward.names})

    def step(index: int) -> StepOutput:
        exp = make_experience(ctx, rl, sampler, sec, index, 1)
        r, timings = exp.rollouts, exp.timings
        t0 = time.perf_counter()
        with torch.no_grad():
            batch = ppo_batch(policy, value, rl.ref, r, exp.scores.total, sec, ctx.device, ctx.amp_dtype, pad_id)
        timings["ref_logprobs"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        order = iteration_generator(cfg.run.seed + 1, index)
        stats = ppo_update(model, optimizer, batch, sec, order, ctx.amp_dtype, pad_id)
        timings["update"] = time.perf_counter() - t0

        metrics = {**experience_metrics(exp), **update_metrics(stats, batch, sec)}
        for phase, seconds in timings.items():
            metrics[f"timing/{phase}_s"] = seconds
        completion_tokens = int(r.lengths.sum())
        metrics["completion_tokens_per_s"] = completion_tokens / max(timings["generation"], 1e-9)
        mask = batch.mask
        iteration_end(ctx, STAGE, index + 1, rl, sec, metrics, state, exp,
                      lambda: ((batch.advantages * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).cpu())
        loss = metrics["policy_loss"] + sec.vf_coef * metrics["value_loss"]
        return StepOutput(loss=loss, finite=stats.finite_everywhere(), metrics=metrics,
                          tokens=completion_tokens + sum(len(p) for p in r.prompt_ids))

    return run_rl_loop(ctx, STAGE, model=model, policy=policy, optimizer=optimizer, step=step, section=sec, rl=rl,
                       start_step=start_step, state=state, extra={"value_model": str(value_path)})


def ppo_batch(policy: torch.nn.Module, value: torch.nn.Module, ref: torch.nn.Module, r: Rollouts,
              scores: torch.Tensor, sec, device: torch.device, amp_dtype, pad_id: int) -> PPOBatch:
    """Old log-probs (policy), reference log-probs and old values on the SAME sampled tokens; the
    per-token KL penalty and the score on the last token as token rewards; GAE -> advantages (whitened
    over every rank's tokens when asked) and returns. An unscorable row (NaN score) has no tokens in
    the mask: out of the loss, the whitening and the token means."""
    scores = scores - sec.missing_eos_penalty * (~r.ended).float()
    ids, sampled = r.completion_ids.to(device), r.completion_mask.to(device)
    old_logp, _ = sequence_logprobs(policy, r.prompt_ids, ids, sampled, sec.temperature, amp_dtype, pad_id)
    ref_device = next(ref.parameters()).device   # the embedding's: inputs go there
    ref_logp, _ = sequence_logprobs(ref, r.prompt_ids, ids.to(ref_device), sampled.to(ref_device),
                                    sec.temperature, amp_dtype, pad_id)
    ref_logp = ref_logp.to(device)
    old_values = sequence_values(value, r.prompt_ids, ids, sampled, amp_dtype, pad_id)
    mask = sampled * (~torch.isnan(scores)).to(device).unsqueeze(1).to(sampled.dtype)   # unscorable rows: none
    kl = kl_per_token(old_logp, ref_logp, sec.kl_estimator) * mask
    token_rewards = per_token_rewards(torch.nan_to_num(scores, nan=0.0).to(device), kl, mask, sec.kl_coef)
    advantages, returns = gae(token_rewards, old_values, mask, sec.gamma, sec.lam)
    if sec.whiten_advantages:
        advantages = global_whiten(advantages, mask)
    return PPOBatch(r, ids, mask, scores, old_logp, old_values, kl, advantages, returns)


def ppo_update(model: PolicyAndValue, optimizer: torch.optim.Optimizer, batch: PPOBatch, sec,
               order: torch.Generator, amp_dtype, pad_id: int) -> UpdateStats:
    """`epochs` passes over the batch, each in a fresh order (`order`) cut into `minibatches`, each
    minibatch in `grad_accum` micro-batches: clipped policy loss + `vf_coef` x clipped value loss,
    token means over the whole global minibatch."""
    r, ids, mask = batch.rollouts, batch.ids, batch.mask
    policy, value = model.policy, model.value
    scorable = (~torch.isnan(batch.scores)).tolist()   # an unscorable row has no tokens in the loss: left out
    passes = ([i for i in torch.randperm(len(r), generator=order).tolist() if scorable[i]] for _ in range(sec.epochs))

    def micro_loss(micro: list[int], total_tokens: float) -> MicroLoss:
        width = int(mask[micro].sum(dim=1).max())
        m = mask[micro, :width].float()
        prompts = [r.prompt_ids[i] for i in micro]
        logp, entropy = sequence_logprobs(policy, prompts, ids[micro, :width], mask[micro, :width],
                                          sec.temperature, amp_dtype, pad_id)
        values = sequence_values(value, prompts, ids[micro, :width], mask[micro, :width], amp_dtype, pad_id)
        old = batch.old_logp[micro, :width]
        pg = clipped_policy_loss(logp, old, batch.advantages[micro, :width], sec.cliprange)
        vf = clipped_value_loss(values, batch.old_values[micro, :width], batch.returns[micro, :width],
                                sec.cliprange_value)
        pg_loss = (pg["loss"] * m).sum() / max(total_tokens, 1.0)
        vf_loss = (vf["loss"] * m).sum() / max(total_tokens, 1.0)
        diagnostics = {"entropy": entropy.detach(), "clip_low": pg["clipped_low"], "clip_high": pg["clipped_high"],
                       "vclip": vf["clipped"], "ratio": pg["ratio"].detach(),
                       "approx_kl": approx_kl_per_token(logp.detach(), old)}
        return MicroLoss(pg_loss + sec.vf_coef * vf_loss, m, diagnostics,
                         {"pg": float(pg_loss.detach()), "vf": float(vf_loss.detach())}, ratio=pg["ratio"])

    return run_updates(list(model.parameters()), optimizer, passes, minibatches=sec.minibatches,
                       grad_accum=sec.grad_accum, clip_grad=sec.clip_grad,
                       normalisers=lambda minibatch: global_sum(float(mask[minibatch].sum())),
                       micro_loss=micro_loss,
                       zero_pass=lambda: _zero_weight_pass(policy, value, r, ids, sec.temperature, amp_dtype, pad_id))


def update_metrics(stats: UpdateStats, batch: PPOBatch, sec) -> dict:
    """TRL's PPO metrics of one iteration."""
    mask, kl = batch.mask, batch.kl
    scorable = ~torch.isnan(batch.scores)
    return {
        "score": nan_mean(batch.scores), "kl": float(kl.sum() / mask.sum().clamp(min=1)),
        "non_score_reward": nan_mean(torch.where(scorable.to(kl.device), (-sec.kl_coef * kl).sum(dim=1), math.nan)),
        "policy_loss": stats.step_mean("pg"), "value_loss": stats.step_mean("vf"),
        "entropy": stats.token_mean("entropy"), "clip_ratio/low": stats.token_mean("clip_low"),
        "clip_ratio/high": stats.token_mean("clip_high"),
        "clip_ratio": (stats.sums["clip_low"] + stats.sums["clip_high"]) / max(stats.tokens, 1.0),
        "value_clip_ratio": stats.token_mean("vclip"), "ratio_mean": stats.token_mean("ratio"),
        "ratio_max": stats.ratio_max, "approx_kl": stats.token_mean("approx_kl"),
        "explained_variance": explained_variance(batch.old_values, batch.returns, mask), "grad_norm": stats.grad_norm,
    }


def _zero_weight_pass(policy, value, r: Rollouts, ids: torch.Tensor, temperature: float, amp_dtype,
                      pad_id: int) -> None:
    """A forward and backward of one row through both models with weight 0: gradients unchanged, but
    their DDP all-reduces meet the other ranks' (`dswb.engine.rl.global_batch`)."""
    one, ones = ids[:1, :1], torch.ones_like(ids[:1, :1])
    logp, _ = sequence_logprobs(policy, [r.prompt_ids[0]], one, ones, temperature, amp_dtype, pad_id)
    values = sequence_values(value, [r.prompt_ids[0]], one, ones, amp_dtype, pad_id)
    ((logp.sum() + values.sum()) * 0.0).backward()
