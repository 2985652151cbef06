"""What PPO and GRPO share: setup (policy, reference, rewards, prompts, sampler), the experience of
one iteration (generation -> scoring, each phase timed), metrics, samples and held-out evaluation.

An iteration's prompts and random numbers are pure functions of (seed, iteration): prompts come
from a seeded permutation per epoch of the prompt set, and sampling uses a generator seeded with
(seed, iteration). A resumed run therefore needs no sampler state to continue bitwise.
Under DDP each rank generates its contiguous block of the iteration's prompts, with the random
numbers those rows draw in one process (`dswb.engine.distributed.sharding`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dswb.engine.adapters.lora import disable_dropout
from dswb.engine.context import StageContext
from dswb.engine.data.records.chat import prompt_ids as encode_prompt
from dswb.engine.data.records.chat import stop_ids
from dswb.engine.data.records.posttrain import PromptRecord, read_prompts, split_records, task_prompts
from dswb.engine.data.records.tokenizer import load_tokenizer
from dswb.engine.distributed.sharding import prompt_block, skip_rows
from dswb.engine.distributed.world import active
from dswb.engine.eval.task import task_accuracy
from dswb.engine.model.load import fit_vocab, load_causal_lm
from dswb.engine.placement.roles import Placement
from dswb.engine.rl.health import RLHealth
from dswb.engine.rl.rewards import CombinedReward, RewardInputs, RewardScores, build_rewards, nan_mean
from dswb.engine.rl.rollout import HFRolloutSampler, Rollouts
from dswb.engine.stages.adapters import StageAdapters, final_extra, stage_adapters
from dswb.engine.stages.common import (StageStart, TaskData, accuracy_target, eval_every, finish_lm, resolve_init,
                                       resume, run_stage_loop)
from dswb.engine.train.prepare import prepare_model
from dswb.errors import UserError

SAMPLES_PER_EVENT = 8
SAMPLE_TEXT_LIMIT = 300


def select_prompts(n_prompts: int, per_step: int, seed: int, step: int) -> list[int]:
    """Indices of the prompts of iteration `step`: consecutive slices of a seeded permutation per
    epoch (an iteration that crosses an epoch boundary takes the rest from the next epoch)."""
    out: list[int] = []
    start = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n_prompts)
        order = np.random.default_rng([seed, 7919, epoch]).permutation(n_prompts)
        out.extend(order[offset:offset + per_step - len(out)].tolist())
    return out


def iteration_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, 104729, step]).integers(2**62)))


@dataclass
class RLSetup:
    start: StageStart
    policy: torch.nn.Module
    tokenizer: Any
    prompt_format: str
    ref: torch.nn.Module | None
    reward: CombinedReward
    prompts: list[PromptRecord]
    prompt_ids: list[list[int]]
    stop_ids: list[int]
    task: TaskData | None
    health: RLHealth
    placement: Placement
    val_prompts: list[PromptRecord] = field(default_factory=list)
    adapters: StageAdapters | None = None
    grown_vocab: bool = False


def prepare_policy(ctx: StageContext, stage: str, rl: RLSetup, need_ref: bool) -> torch.nn.Module:
    """The policy placed and prepared (with the stage's adapters when `[lora]` is on, every dropout
    off: the policy that samples is the policy that trains, so the first ratio is exactly 1); with
    adapters, the reference (when `need_ref`) is the policy's start as a view of it."""
    adapters = rl.adapters
    policy = prepare_model(rl.policy, ctx.config, ctx.device, placement=rl.placement,
                           adapters=adapters.transform(grown_vocab=rl.grown_vocab) if adapters else None)
    if adapters is not None:
        if disable_dropout(policy):
            ctx.monitor.log(f"lora.dropout {adapters.settings.dropout:g} is off in {stage}: the policy that samples "
                            f"is the one that trains", stage=stage)
        if need_ref:
            rl.ref = adapters.reference(policy)
            ctx.monitor.log("reference: the start model, as the policy with its adapter "
                            + ("frozen at its start (a second adapter)" if adapters.continued else "off"), stage=stage)
    rl.policy = policy
    return policy


def load_prompt_records(ctx: StageContext, section: Any, stage: str) -> tuple[list[PromptRecord], list[PromptRecord], TaskData | None]:
    cfg = ctx.config
    if cfg.data.source == "task" and not section.data:
        td = TaskData.from_config(cfg)
        return task_prompts(td.splits.train), task_prompts(td.splits.val), td
    train, val = split_records(read_prompts(section.data, f"{stage}.data"), section.val_fraction, cfg.run.seed)
    return train, val, None


def setup(ctx: StageContext, stage: str, section: Any, *, need_ref: bool) -> RLSetup:
    cfg = ctx.config
    start = resolve_init(ctx, stage, section.init, f"{stage}.init")
    tokenizer = load_tokenizer(start.path, f"{stage}.init")
    adapters = stage_adapters(cfg, stage, start.path)
    if adapters is not None:
        policy = adapters.load_lm(start.path, f"{stage}.init", ctx.device, ctx.amp_dtype)
    else:
        policy = load_causal_lm(start.path, f"{stage}.init")
    grown = fit_vocab(policy, tokenizer)
    prompts, val_prompts, task = load_prompt_records(ctx, section, stage)
    if prompts[0].is_chat and start.prompt_format != "chat":
        raise UserError(f"{stage}.data: chat prompts, but the starting model {start.path} was not trained on chats "
                        f"(run sft on chat records first)")
    prompt_format = start.prompt_format
    if any("answer" not in p.fields for p in prompts) and "exact_match" in section.rewards:
        raise UserError(f"{stage}.rewards: exact_match needs an 'answer' field in every prompt record "
                        f"({next(p.where for p in prompts if 'answer' not in p.fields)} has none)")
    world = active()
    if world is not None and section.prompts_per_step < world.size:
        raise UserError(f"{stage}.prompts_per_step: {section.prompts_per_step} prompts for {world.size} processes: "
                        f"each process generates its share of an iteration's prompts, so give at least {world.size}")
    placement = Placement(cfg, ctx.device)
    ref = None
    if need_ref and adapters is None:   # with adapters: the policy's start (`adapter_reference`)
        ref = load_causal_lm(start.path, f"{stage}.init").requires_grad_(False)
        fit_vocab(ref, tokenizer)
        ref = placement.place(ref, role="reference", trainable=False).eval()

    def place_reward_model(model: torch.nn.Module) -> torch.nn.Module:
        return placement.place(model, role="reward", trainable=False).eval()

    reward = build_rewards(section.rewards, section.reward_weights, f"{stage}.rewards",
                           run_rm=ctx.finals.get("rm") or ctx.paths.final("rm"), place=place_reward_model,
                           amp_dtype=ctx.amp_dtype)
    health = RLHealth(alert_kl=section.alert_kl, alert_clip_ratio=section.alert_clip_ratio,
                      alert_approx_kl=section.alert_approx_kl, alert_ratio_max=section.alert_ratio_max,
                      kl_estimator=section.kl_estimator)
    return RLSetup(start=start, policy=policy, tokenizer=tokenizer, prompt_format=prompt_format, ref=ref,
                   placement=placement, adapters=adapters, grown_vocab=grown,
                   reward=reward, prompts=prompts, prompt_ids=encode_prompts(tokenizer, prompts),
                   stop_ids=stop_ids(tokenizer, prompt_format), task=task, health=health, val_prompts=val_prompts)


def encode_prompts(tokenizer: Any, records: list[PromptRecord]) -> list[list[int]]:
    """Token ids of every prompt, ready for generation (plain prompts in one batched call)."""
    if records and not records[0].is_chat:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        texts = [r.prompt for r in records]
        return [bos + list(ids) for ids in tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]]
    return [encode_prompt(tokenizer, r.prompt) for r in records]


@dataclass
class Experience:
    rollouts: Rollouts
    records: list[PromptRecord]         # per row
    completions: list[str]
    scores: RewardScores
    timings: dict[str, float]


def make_experience(ctx: StageContext, rl: RLSetup, sampler: HFRolloutSampler, section: Any, step: int,
                    samples_per_prompt: int) -> Experience:
    """Generation then scoring for iteration `step` (timed)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    chosen = select_prompts(len(rl.prompts), section.prompts_per_step, ctx.config.run.seed, step)
    lo, hi = prompt_block(len(chosen))     # all of them in one process
    generator = iteration_generator(ctx.config.run.seed, step)
    if section.temperature > 0:
        skip_rows(generator, lo * samples_per_prompt, section.max_new_tokens)
    chosen = chosen[lo:hi]
    rollouts = sampler.generate([rl.prompt_ids[i] for i in chosen], samples_per_prompt=samples_per_prompt,
                                max_new_tokens=section.max_new_tokens, temperature=section.temperature,
                                top_p=section.top_p, stop_ids=rl.stop_ids, generator=generator)
    _sync(ctx)
    timings["generation"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    records = [rl.prompts[chosen[int(k)]] for k in rollouts.prompt_index]
    ids = [row[:int(n)] for row, n in zip(rollouts.completion_ids.tolist(), rollouts.lengths.tolist())]
    completions = rl.tokenizer.batch_decode(ids, skip_special_tokens=True)
    columns = {k: [r.fields.get(k) for r in records] for k in sorted({k for r in records for k in r.fields})}
    scores = rl.reward(RewardInputs(prompts=[r.prompt for r in records], completions=completions, completion_ids=ids,
                                    ended=rollouts.ended.tolist(), columns=columns))
    timings["scoring"] = time.perf_counter() - t0
    return Experience(rollouts, records, completions, scores, timings)


def _sync(ctx: StageContext) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)


def experience_metrics(exp: Experience) -> dict:
    """TRL-named reward and completion statistics of one iteration."""
    r = exp.rollouts
    lengths = r.lengths.float()
    total = exp.scores.total
    metrics = {
        "reward": float(total.mean()), "reward_std": float(total.std()) if total.numel() > 1 else 0.0,
        "completions/mean_length": float(lengths.mean()), "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": float((~r.ended).float().mean()), "eos_rate": float(r.ended.float().mean()),
    }
    for name, values in exp.scores.per_source.items():
        metrics[f"rewards/{name}/mean"] = nan_mean(values)
    return metrics


def samples_event(ctx: StageContext, stage: str, step: int, exp: Experience, advantages: torch.Tensor) -> None:
    """A bounded `samples` event: the first completions of the iteration with their rewards."""
    def cut(text: str) -> str:
        return text if len(text) <= SAMPLE_TEXT_LIMIT else text[:SAMPLE_TEXT_LIMIT - 1] + "…"

    rows = []
    for i in range(min(SAMPLES_PER_EVENT, len(exp.completions))):
        prompt = exp.records[i].prompt
        rows.append({"prompt": cut(prompt if isinstance(prompt, str) else prompt[-1]["content"]),
                     "completion": cut(exp.completions[i]), "reward": float(exp.scores.total[i]),
                     "rewards": {k: float(v[i]) for k, v in exp.scores.per_source.items()},
                     "advantage": float(advantages[i]), "length": int(exp.rollouts.lengths[i]),
                     "ended": bool(exp.rollouts.ended[i])})
    ctx.monitor.emit("samples", stage, step, samples=rows)


def evaluator(ctx: StageContext, stage: str, rl: RLSetup):
    """Held-out exact match on the task's validation prompts (greedy), feeding the hacking check."""
    def evaluate(step: int) -> dict:
        if rl.task is None or not ctx.config.eval.task_samples:
            return {}
        prompts, answers = rl.task.val(ctx.config.eval.task_samples)
        metrics = {"task_acc": task_accuracy(rl.policy, rl.tokenizer, prompts, answers, ctx.device,
                                             prompt_format=rl.prompt_format)}
        for alert in rl.health.check_eval(step, metrics):
            ctx.monitor.alert(stage, step, alert.code, alert.message, alert.explain, alert.level)
        return metrics
    return evaluate


def test_scorer(ctx: StageContext, rl: RLSetup):
    if rl.task is None:
        return None

    def score() -> dict:
        prompts, answers = rl.task.test()
        return {"test_acc": task_accuracy(rl.policy, rl.tokenizer, prompts, answers, ctx.device,
                                          prompt_format=rl.prompt_format)}
    return score


def emit_alerts(ctx: StageContext, stage: str, step: int, rl: RLSetup, metrics: dict) -> None:
    for alert in rl.health.check(step, metrics):
        ctx.monitor.alert(stage, step, alert.code, alert.message, alert.explain, alert.level)


def iteration_end(ctx: StageContext, stage: str, step: int, rl: RLSetup, section: Any, metrics: dict, state: dict,
                  exp: Experience, sample_advantages) -> None:
    """What every RL iteration ends with: alerts, the health state for the checkpoint and, every
    `samples_every` iterations, a `samples` event (`sample_advantages()`: one advantage per row)."""
    emit_alerts(ctx, stage, step, rl, metrics)
    state["health"] = rl.health.state_dict()
    if section.samples_every and step % section.samples_every == 0:
        samples_event(ctx, stage, step, exp, sample_advantages())


def run_rl_loop(ctx: StageContext, stage: str, *, model: torch.nn.Module, policy: torch.nn.Module,
                optimizer: torch.optim.Optimizer, step, section: Any, rl: RLSetup, start_step: int, state: dict,
                extra: dict | None = None) -> str:
    """The training loop of an RL stage (`step` is one iteration) and, when it finishes, the policy's
    final model with its held-out accuracy. `model` is what the optimizer trains (PPO: policy and
    value); FP8 statistics are the policy's; no MFU: an iteration is mostly generation."""
    outcome, end_step = run_stage_loop(ctx, stage, model, optimizer, step, section, start_step=start_step,
                                       state=state, evaluate=evaluator(ctx, stage, rl), hooks_of=policy,
                                       eval_every=eval_every(ctx, section), stop_when=accuracy_target(section))
    if outcome != "finished":
        return outcome
    return finish_lm(ctx, stage, policy, rl.tokenizer, end_step, rl.prompt_format, test_scorer(ctx, rl),
                     extra=final_extra(rl.adapters, **(extra or {})))


def resume_rl(ctx: StageContext, stage: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              rl: RLSetup) -> tuple[int, dict]:
    """(start step, trainer state) of an RL stage from its latest checkpoint, with the health
    monitor's state restored; an RL stage has no data position (prompts are a function of the step)."""
    start_step, state = resume(ctx, stage, model, optimizer, rl.adapters)
    state.pop("data", None)
    if "health" in state:
        rl.health.load_state_dict(state["health"])
    return start_step, state


def rollout_sampler(ctx: StageContext, rl: RLSetup, policy: torch.nn.Module, section: Any) -> HFRolloutSampler:
    return HFRolloutSampler(policy, rl.tokenizer.pad_token_id, ctx.device, ctx.amp_dtype,
                            batch_size=section.rollout_batch or None)
