"""GRPO (DeepSeekMath's group-relative policy optimisation), with RLOO and REINFORCE++ advantages.

One iteration = one `run_loop` step:
1. generation: `prompts_per_step` prompts x `group_size` completions (KV-cached sampler); with
   `dynamic_sampling`, more rounds until `prompts_per_step` groups carry signal
   (`dswb.engine.rl.dynamic_sampling`);
2. scoring: the reward sources, summed with their weights (NaN: an unscorable completion);
3. advantages per completion from its group (`grpo.advantage`, `grpo.scale_rewards`); unscorable
   completions are left out of the group statistics and of the loss; groups with zero reward
   variance are counted and, with `drop_zero_variance`, left out of the loss;
4. old / reference log-probs, only when needed: old ones when the batch is reused (`num_iterations`
   > 1 or several `minibatches`; else the ratio is exactly 1 and the gradient is -A * grad log p),
   reference ones when `beta` > 0 (a per-token KL estimate, `kl_estimator` k1 or k3, added to the
   per-token loss, as TRL does);
5. update: `num_iterations` passes over the batch in `minibatches` optimizer steps, each split
   into `grad_accum` micro-batches; the per-token clipped loss (clip 1 - epsilon, 1 + epsilon_high)
   is aggregated by `loss_type` over the whole minibatch (`dswb.engine.rl.losses.loss_weights`).
   Its sequence normaliser counts every generated row of the minibatch: a row out of the loss
   (truncated with `mask_truncated`, in a dropped group, unscorable, empty) adds 0 to the sum, as a
   row with a zero mask does in TRL; its token normaliser counts the tokens in the loss.
Kept from the paper: group normalisation, clipped ratio, a KL term to the reference. Differences,
as in TRL: beta 0 by default (no reference model), token-level "dapo" aggregation by default,
truncated completions optionally masked. Under DDP each rank generates its share of the prompts;
advantages and loss normalisers are computed over every rank's rows
(`dswb.engine.rl.global_batch`), so the update is the one-process update on the same global batch
(with `minibatches = 1`; with more, each global minibatch is the union of the ranks' k-th parts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dswb.engine.context import StageContext
from dswb.engine.rl.advantages import group_advantages, zero_std_groups
from dswb.engine.rl.dynamic_sampling import Sampled, dynamic_sample
from dswb.engine.rl.global_batch import global_advantages, global_sum
from dswb.engine.rl.losses import approx_kl_per_token, clipped_policy_loss, kl_per_token, loss_weights
from dswb.engine.rl.rollout import Rollouts, sequence_logprobs
from dswb.engine.rl.update import MicroLoss, UpdateStats, run_updates
from dswb.engine.stages.common import begin_stage, describe_model
from dswb.engine.stages.rl_common import (experience_metrics, iteration_end, make_experience, prepare_policy, resume_rl,
                                          rollout_sampler, run_rl_loop, setup)
from dswb.engine.train.loop import StepOutput
from dswb.engine.train.optim import build_optimizer

STAGE = "grpo"
SKIP_ZERO_ADVANTAGE = True   # an exact saving (see `update_rows`); tests switch it off to compare


@dataclass
class PolicyBatch:
    """An iteration's completions as the update trains them (tensors on the training device)."""

    rollouts: Rollouts
    ids: torch.Tensor                    # [B, T] completion tokens
    mask: torch.Tensor                   # [B, T] tokens in the loss (`loss_mask`)
    advantages: torch.Tensor             # [B]
    rows: list[int]                      # every generated row: each counts in the sequence normaliser
    active: set[int]                     # rows that carry signal: the only ones through forward and backward
    old_logp: torch.Tensor | None = None   # [len(scored), T], rows in `scored` order
    ref_logp: torch.Tensor | None = None

    @property
    def scored(self) -> list[int]:
        return [i for i in self.rows if i in self.active]


def run(ctx: StageContext) -> str:
    sec = ctx.config.grpo
    rl = setup(ctx, STAGE, sec, need_ref=sec.beta > 0)
    policy = prepare_policy(ctx, STAGE, rl, need_ref=sec.beta > 0)
    optimizer = build_optimizer(policy, sec, ctx.device)
    start_step, state = resume_rl(ctx, STAGE, policy, optimizer, rl)
    sampler = rollout_sampler(ctx, rl, policy, sec)
    pad_id = rl.tokenizer.pad_token_id
    G = sec.group_size
    begin_stage(ctx, STAGE, start_step, sec.steps, model=describe_model(policy, len(rl.tokenizer), str(rl.start.path)),
                data={"prompts": len(rl.prompts), "val_prompts": len(rl.val_prompts), "rewards": rl.reward.names,
                      "completions_per_step": sec.prompts_per_step * G})

    def experience(index: int) -> Sampled:
        def generate(attempt: int):
            return make_experience(ctx, rl, sampler, sec, index, G, attempt=attempt)

        if not sec.dynamic_sampling:
            return Sampled.single(generate(0), G)
        sampled = dynamic_sample(generate, G, sec.prompts_per_step, sec.dynamic_sampling_tries, pad_id)
        if sampled.groups_kept < sec.prompts_per_step:
            rounds = f"{sampled.rounds} round{'s' if sampled.rounds > 1 else ''}"
            ctx.monitor.log(f"dynamic sampling: {sampled.groups_kept} of {sec.prompts_per_step} groups with signal "
                            f"after {rounds} (grpo.dynamic_sampling_tries); groups without signal fill the batch",
                            stage=STAGE, step=index + 1)
        return sampled

    def step(index: int) -> StepOutput:
        sampled = experience(index)
        exp = sampled.experience
        r, timings, rewards = exp.rollouts, exp.timings, exp.scores.total
        adv = global_advantages(rewards, lambda everything: group_advantages(everything, G, sec.advantage,
                                                                             sec.scale_rewards))
        zero = zero_std_groups(rewards, G)
        batch = update_rows(r, adv, zero, sec, skip_zero_advantage=SKIP_ZERO_ADVANTAGE and rl.ref is None,
                            device=ctx.device, unscorable=torch.isnan(rewards))

        t0 = time.perf_counter()
        with torch.no_grad():
            attach_logprobs(batch, policy, rl.ref, sec, ctx.amp_dtype, pad_id)
        timings["ref_logprobs"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        stats = grpo_update(policy, optimizer, batch, sec, ctx.amp_dtype, pad_id)
        timings["update"] = time.perf_counter() - t0

        metrics = {**experience_metrics(exp), **update_metrics(stats), "grad_norm": stats.grad_norm,
                   "frac_reward_zero_std": float(zero.float().mean()), "rows_trained": len(batch.scored)}
        if sec.dynamic_sampling:
            metrics.update(sampled.metrics())
        for phase, seconds in timings.items():
            metrics[f"timing/{phase}_s"] = seconds
        metrics["completion_tokens_per_s"] = sampled.completion_tokens / max(timings["generation"], 1e-9)
        iteration_end(ctx, STAGE, index + 1, rl, sec, metrics, state, exp, batch.advantages.cpu)
        return StepOutput(loss=stats.step_mean("loss"), finite=stats.finite_everywhere(), metrics=metrics,
                          tokens=sampled.completion_tokens + sampled.prompt_tokens)

    return run_rl_loop(ctx, STAGE, model=policy, policy=policy, optimizer=optimizer, step=step, section=sec, rl=rl,
                       start_step=start_step, state=state)


def update_rows(r: Rollouts, advantages: torch.Tensor, zero_groups: torch.Tensor, sec, *, skip_zero_advantage: bool,
                device: torch.device, unscorable: torch.Tensor | None = None) -> PolicyBatch:
    """Every generated row, with the tokens in the loss (`loss_mask`) and the rows that go through
    forward and backward: those with tokens in the loss and, with `skip_zero_advantage`, a non-zero
    advantage. Without a KL term a zero-advantage row adds nothing to the loss or its gradient,
    whatever its ratio: skipping it is exact (it still counts in the normalisers)."""
    mask = loss_mask(r, zero_groups, unscorable, sec)
    rows = list(range(len(r)))
    carries = mask.any(dim=1) & ((advantages.to(mask.device) != 0) if skip_zero_advantage else True)
    active = {i for i, c in enumerate(carries.tolist()) if c}
    return PolicyBatch(rollouts=r, ids=r.completion_ids.to(device), mask=mask.to(device),
                       advantages=advantages.to(device), rows=rows, active=active)


def loss_mask(r: Rollouts, zero_groups: torch.Tensor, unscorable: torch.Tensor | None, sec) -> torch.Tensor:
    """`[B, T]` the completion tokens in the loss: none of a row that is truncated (with
    `mask_truncated`), in a group without signal (with `drop_zero_variance`), or unscorable."""
    mask = r.completion_mask.clone()
    out = torch.zeros(len(r), dtype=torch.bool, device=mask.device)
    if sec.mask_truncated:
        out |= ~r.ended.to(mask.device)
    if sec.drop_zero_variance:
        out |= zero_groups.to(mask.device).repeat_interleave(sec.group_size)
    if unscorable is not None:
        out |= unscorable.to(mask.device)
    mask[out] = 0
    return mask


def attach_logprobs(batch: PolicyBatch, policy: torch.nn.Module, ref: torch.nn.Module | None, sec, amp_dtype,
                    pad_id: int) -> None:
    """Old and reference log-probs of the scored rows, only when needed: old ones when the batch is
    reused (else the ratio is exactly 1), reference ones when there is a KL term."""
    need_old = sec.num_iterations > 1 or sec.minibatches > 1
    scored = batch.scored
    if scored and need_old:
        batch.old_logp = _logprobs(policy, batch, scored, sec.temperature, amp_dtype, pad_id)
    if scored and ref is not None:
        batch.ref_logp = _logprobs(ref, batch, scored, sec.temperature, amp_dtype, pad_id)


def grpo_update(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: PolicyBatch, sec, amp_dtype,
                pad_id: int) -> UpdateStats:
    """`num_iterations` passes over the batch's rows in `minibatches` optimizer steps, each over
    `grad_accum` micro-batches: the clipped per-token loss (+ beta * KL), weighted by `loss_type`
    over the whole global minibatch (sequences: every row of it; tokens: those in the loss)."""
    r, ids, mask, adv = batch.rollouts, batch.ids, batch.mask, batch.advantages
    position = {row: k for k, row in enumerate(batch.scored)}   # row -> index into old/ref log-prob tensors

    def normalisers(minibatch: list[int]) -> tuple[int, int]:
        total_tokens = int(global_sum(int(mask[minibatch].sum())))
        return int(global_sum(len(minibatch))), total_tokens

    def micro_loss(micro: list[int], totals: tuple[int, int]) -> MicroLoss:
        width = int(mask[micro].sum(dim=1).max())
        m = mask[micro, :width]
        logp, entropy = sequence_logprobs(policy, [r.prompt_ids[i] for i in micro], ids[micro, :width], m,
                                          sec.temperature, amp_dtype, pad_id)
        pos = [position[i] for i in micro]
        old = batch.old_logp[pos, :width] if batch.old_logp is not None else logp.detach()
        terms = clipped_policy_loss(logp, old, adv[micro], sec.epsilon, sec.epsilon_high)
        per_token = terms["loss"]
        diagnostics = {"entropy": entropy.detach(), "clip_low": terms["clipped_low"],
                       "clip_high": terms["clipped_high"], "ratio": terms["ratio"].detach(),
                       "approx_kl": approx_kl_per_token(logp.detach(), old)}
        if batch.ref_logp is not None:
            kl = kl_per_token(logp, batch.ref_logp[pos, :width], sec.kl_estimator)
            per_token = per_token + sec.beta * kl
            diagnostics["kl"] = kl.detach()
        w = loss_weights(m, sec.loss_type, *totals, sec.max_new_tokens)
        loss = (w * per_token).sum()
        return MicroLoss(loss, m, diagnostics, {"loss": float(loss.detach())}, ratio=terms["ratio"])

    return run_updates(list(policy.parameters()), optimizer, [batch.rows] * sec.num_iterations,
                       minibatches=sec.minibatches, grad_accum=sec.grad_accum, clip_grad=sec.clip_grad,
                       normalisers=normalisers, micro_loss=micro_loss, has_signal=lambda i: i in batch.active,
                       zero_pass=lambda: _zero_weight_pass(policy, r, ids, sec.temperature, amp_dtype, pad_id))


def update_metrics(stats: UpdateStats) -> dict:
    """TRL-named diagnostics of the policy update (token means over the iteration)."""
    out = {"entropy": stats.token_mean("entropy"), "clip_ratio/low": stats.token_mean("clip_low"),
           "clip_ratio/high": stats.token_mean("clip_high"),
           "clip_ratio": (stats.sums.get("clip_low", 0.0) + stats.sums.get("clip_high", 0.0)) / max(stats.tokens, 1.0),
           "ratio_mean": stats.token_mean("ratio"), "ratio_max": stats.ratio_max,
           "approx_kl": stats.token_mean("approx_kl")}
    if "kl" in stats.sums:
        out["kl"] = stats.token_mean("kl")
    return out


def _zero_weight_pass(policy, r: Rollouts, ids: torch.Tensor, temperature: float, amp_dtype, pad_id: int) -> None:
    """A forward and backward of one row with weight 0: the gradient is unchanged, but DDP's
    all-reduce of this backward pass meets the other ranks' (`dswb.engine.rl.global_batch`)."""
    logp, _ = sequence_logprobs(policy, [r.prompt_ids[0]], ids[:1, :1], torch.ones_like(ids[:1, :1]), temperature,
                                amp_dtype, pad_id)
    (logp.sum() * 0.0).backward()


def _logprobs(model: torch.nn.Module, batch: PolicyBatch, rows: list[int], temperature: float, amp_dtype,
              pad_id: int) -> torch.Tensor:
    """`[len(rows), T]` log-probs of the given rows' completions under `model` (no grad)."""
    model_device = next(model.parameters()).device
    logp, _ = sequence_logprobs(model, [batch.rollouts.prompt_ids[i] for i in rows], batch.ids[rows].to(model_device),
                                batch.mask[rows].to(model_device), temperature, amp_dtype, pad_id)
    return logp.to(batch.ids.device)
