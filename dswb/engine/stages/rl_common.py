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
from dswb.engine.data.records.thinking import DEFAULT_TAGS, split_thinking
from dswb.engine.data.records.tokenizer import load_tokenizer
from dswb.engine.distributed.sharding import prompt_block, skip_rows
from dswb.engine.distributed.world import active
from dswb.engine.eval.reward import (HELD_OUT_REWARD_PROMPTS, HeldOutPrompts, held_out_prompts, held_out_reward,
                                     reward_inputs)
from dswb.engine.eval.task import generation_budget, task_accuracy
from dswb.engine.model.load import fit_vocab, load_causal_lm
from dswb.engine.placement.roles import Placement
from dswb.engine.rl.health import RLHealth
from dswb.engine.rl.reward_rules import format_score
from dswb.engine.rl.rewards import CombinedReward, RewardScores, build_rewards, nan_mean
from dswb.engine.rl.rollout import HFRolloutSampler, Rollouts
from dswb.engine.stages.adapters import StageAdapters, final_extra, stage_adapters
from dswb.engine.stages.common import (StageStart, TaskData, accuracy_target, eval_every, finish_lm, resolve_init,
                                       resume, run_stage_loop)
from dswb.engine.train.prepare import prepare_model
from dswb.errors import UserError

SAMPLES_PER_EVENT = 8
SAMPLE_TEXT_LIMIT = 300
THINK_TEXT_LIMIT = 2000
CORRECTNESS_SOURCES = ("math", "exact_match")   # the first one a stage has is its accuracy
UNSCORABLE_EXPLAIN = ("A reward source could not score some completions (its function raised, ran past "
                      "rewards_timeout_s, or its worker died). They are left out of the update (NaN reward: out of "
                      "the group's mean and std, advantage 0), so they bias nothing, but they teach nothing either. "
                      "rewards/<source>/unscorable counts them every iteration; fix the function, or raise "
                      "rewards_timeout_s if it is only slow.")


def select_prompts(n_prompts: int, per_step: int, seed: int, step: int, attempt: int = 0) -> list[int]:
    """Indices of the prompts of iteration `step`: consecutive slices of a seeded permutation per
    epoch (an iteration that crosses an epoch boundary takes the rest from the next epoch).
    Attempt k > 0 (dynamic sampling's k-th extra round) draws its own, seeded by (seed, step, k),
    prompts that no earlier attempt of the iteration drew first."""
    out: list[int] = []
    start = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n_prompts)
        order = np.random.default_rng([seed, 7919, epoch]).permutation(n_prompts)
        out.extend(order[offset:offset + per_step - len(out)].tolist())
    drawn = set(out)
    for k in range(1, attempt + 1):
        rng = np.random.default_rng([seed, 7927, step, k])
        candidates = rng.choice(n_prompts, size=min(n_prompts, per_step + len(drawn)), replace=False).tolist()
        ranked = [i for i in candidates if i not in drawn] + [i for i in candidates if i in drawn]
        out = [ranked[j % len(ranked)] for j in range(per_step)]
        drawn.update(out)
    return out


def iteration_generator(seed: int, step: int, attempt: int = 0) -> torch.Generator:
    """The sampling generator of iteration `step` (of its `attempt`-th extra round when > 0)."""
    salt = [seed, 104729, step] if attempt == 0 else [seed, 104723, step, attempt]
    return torch.Generator().manual_seed(int(np.random.default_rng(salt).integers(2**62)))


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
    think_open: list[bool] = field(default_factory=list)   # per prompt: it ends inside an open thinking
    think_tags: tuple[str, str] = DEFAULT_TAGS
    format_regex: str = ""
    reasoning: bool = False     # reasoning metrics and samples (think / answer)
    alerted: set[str] = field(default_factory=set)   # reward sources whose failures were alerted


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
        train, val = task_prompts(td.splits.train), task_prompts(td.splits.val)
    else:
        td = None
        train, val = split_records(read_prompts(section.data, f"{stage}.data"), section.val_fraction, cfg.run.seed)
    return (train[:section.max_records] if section.max_records else train), val, td


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
    for rule in ("exact_match", "math"):
        if rule in section.rewards and any("answer" not in p.fields for p in prompts):
            raise UserError(f"{stage}.rewards: {rule} needs an 'answer' field in every prompt record "
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

    prompt_ids = encode_prompts(tokenizer, prompts)
    tags = (section.think_tags[0], section.think_tags[1])
    think_open = opens_thinking(tokenizer, prompt_ids, tags[0])
    health = RLHealth(alert_kl=section.alert_kl, alert_clip_ratio=section.alert_clip_ratio,
                      alert_approx_kl=section.alert_approx_kl, alert_ratio_max=section.alert_ratio_max,
                      kl_estimator=section.kl_estimator)
    reward = build_rewards(section.rewards, section.reward_weights, f"{stage}.rewards",   # last: it starts workers
                           run_rm=ctx.finals.get("rm") or ctx.paths.final("rm"), place=place_reward_model,
                           amp_dtype=ctx.amp_dtype, section=section)
    reasoning = "format" in section.rewards or any(think_open) or bool(cfg.task.think and task is not None)
    return RLSetup(start=start, policy=policy, tokenizer=tokenizer, prompt_format=prompt_format, ref=ref,
                   placement=placement, adapters=adapters, grown_vocab=grown,
                   reward=reward, prompts=prompts, prompt_ids=prompt_ids,
                   stop_ids=stop_ids(tokenizer, prompt_format), task=task, health=health, val_prompts=val_prompts,
                   think_open=think_open, think_tags=tags, format_regex=section.format_regex, reasoning=reasoning)


def opens_thinking(tokenizer: Any, prompt_ids: list[list[int]], open_tag: str) -> list[bool]:
    """Per prompt: whether it ends inside an open thinking (its text, trailing whitespace aside, ends
    with the opening tag, as DeepSeek-R1's and Qwen3's templates end the generation prompt)."""
    tails = tokenizer.batch_decode([ids[-32:] for ids in prompt_ids], skip_special_tokens=False)
    return [tail.rstrip().endswith(open_tag) for tail in tails]


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
                    samples_per_prompt: int, attempt: int = 0) -> Experience:
    """Generation then scoring for iteration `step` (timed); `attempt` k > 0 is dynamic sampling's
    k-th extra round, with prompts and random numbers of its own."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    chosen = select_prompts(len(rl.prompts), section.prompts_per_step, ctx.config.run.seed, step, attempt)
    lo, hi = prompt_block(len(chosen))     # all of them in one process
    generator = iteration_generator(ctx.config.run.seed, step, attempt)
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
    opened = [rl.think_open[chosen[int(k)]] for k in rollouts.prompt_index]
    scores = rl.reward(reward_inputs(records, completions, ids, rollouts.ended.tolist(), opened, section.max_new_tokens))
    if rl.reasoning:
        scores.reasoning = reasoning_rows(rl, completions, opened)
    timings["scoring"] = time.perf_counter() - t0
    return Experience(rollouts, records, completions, scores, timings)


def reasoning_rows(rl: RLSetup, completions: list[str], opened: list[bool]) -> dict[str, torch.Tensor]:
    """Per completion of a reasoning stage: whether its prompt opened the thinking, whether it is in
    the think/answer format, and the tokens of its thinking (counted with the policy's tokenizer;
    -1: no thinking)."""
    thinks = [split_thinking(c, rl.think_tags, o).think for c, o in zip(completions, opened)]
    counted = rl.tokenizer([t or "" for t in thinks], add_special_tokens=False, return_attention_mask=False)
    tokens = [len(ids) if t is not None else -1 for t, ids in zip(thinks, counted["input_ids"])]
    return {"think_open": torch.tensor(opened, dtype=torch.bool),
            "in_format": torch.tensor([format_score(c, rl.think_tags, o, rl.format_regex)
                                       for c, o in zip(completions, opened)]),
            "think_tokens": torch.tensor(tokens, dtype=torch.long)}


def _sync(ctx: StageContext) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)


def experience_metrics(exp: Experience) -> dict:
    """TRL-named reward and completion statistics of one iteration (the reward's over the scorable
    rows), the unscorable count of each source and, in a reasoning stage, `reasoning/*`."""
    r = exp.rollouts
    lengths = r.lengths.float()
    scored = exp.scores.total[~torch.isnan(exp.scores.total)]
    metrics = {
        "reward": nan_mean(exp.scores.total), "reward_std": float(scored.std()) if scored.numel() > 1 else 0.0,
        "completions/mean_length": float(lengths.mean()), "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": float((~r.ended).float().mean()), "eos_rate": float(r.ended.float().mean()),
    }
    unscorable = exp.scores.unscorable_counts()
    for name, values in exp.scores.per_source.items():
        metrics[f"rewards/{name}/mean"] = nan_mean(values)
        metrics[f"rewards/{name}/unscorable"] = unscorable.get(name, 0)
    if exp.scores.reasoning:
        metrics.update(reasoning_metrics(exp.scores))
    return metrics


def reasoning_metrics(scores: RewardScores) -> dict:
    """Format rate, accuracy (the mean of `math`, else `exact_match`, when the stage has one) and the
    thinking's length in tokens (over the completions that think; 0 when none does)."""
    rows = scores.reasoning
    thinking = rows["think_tokens"][rows["think_tokens"] >= 0].float()
    metrics = {"reasoning/format_rate": float(rows["in_format"].float().mean()),
               "reasoning/think_mean_tokens": float(thinking.mean()) if thinking.numel() else 0.0,
               "reasoning/think_max_tokens": float(thinking.max()) if thinking.numel() else 0.0}
    correct = next((scores.per_source[n] for n in CORRECTNESS_SOURCES if n in scores.per_source), None)
    if correct is not None:
        metrics["reasoning/accuracy"] = nan_mean(correct)
    return metrics


def reward_alerts(ctx: StageContext, stage: str, step: int, rl: RLSetup, scores: RewardScores) -> None:
    """A `reward_unscorable` alert the first time a source fails in this stage (its counts are
    metrics every iteration)."""
    for name, count in scores.unscorable_counts().items():
        if count and name not in rl.alerted:
            rl.alerted.add(name)
            error = scores.errors.get(name, "no error text")
            ctx.monitor.alert(stage, step, "reward_unscorable", f"{name}: {count} completions unscorable: {error}",
                              UNSCORABLE_EXPLAIN, "warning")


def samples_event(ctx: StageContext, stage: str, step: int, exp: Experience, advantages: torch.Tensor,
                  tags: tuple[str, str] = DEFAULT_TAGS) -> None:
    """A bounded `samples` event: the first completions of the iteration with their rewards (in a
    reasoning stage also their thinking, answer and thinking tokens)."""
    rows = []
    for i in range(min(SAMPLES_PER_EVENT, len(exp.completions))):
        prompt = exp.records[i].prompt
        row = {"prompt": cut(prompt if isinstance(prompt, str) else prompt[-1]["content"]),
               "completion": cut(exp.completions[i]), "reward": float(exp.scores.total[i]),
               "rewards": {k: float(v[i]) for k, v in exp.scores.per_source.items()},
               "advantage": float(advantages[i]), "length": int(exp.rollouts.lengths[i]),
               "ended": bool(exp.rollouts.ended[i])}
        if exp.scores.reasoning:
            reasoning = exp.scores.reasoning
            thought = split_thinking(exp.completions[i], tags, bool(reasoning["think_open"][i]))
            think, answer = thought.think, thought.answer
            row.update(think=None if think is None else cut(think, THINK_TEXT_LIMIT), answer=cut(answer) or None,
                       think_tokens=None if think is None else int(reasoning["think_tokens"][i]))
        rows.append(row)
    ctx.monitor.emit("samples", stage, step, samples=rows)


def cut(text: str, limit: int = SAMPLE_TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def evaluator(ctx: StageContext, stage: str, rl: RLSetup, section: Any, sampler: HFRolloutSampler | None = None):
    """On the built-in task: held-out exact match on its validation prompts (greedy), feeding the
    hacking check. On files: `val_reward`, the mean reward of greedy completions of the first
    `HELD_OUT_REWARD_PROMPTS` validation prompts (`dswb.engine.eval.reward`)."""
    held: list[HeldOutPrompts] = []   # encoded at the first evaluation

    def files_reward() -> dict:
        if not held:
            ids = encode_prompts(rl.tokenizer, rl.val_prompts[:HELD_OUT_REWARD_PROMPTS])
            held.append(held_out_prompts(rl.val_prompts, ids, opens_thinking(rl.tokenizer, ids, rl.think_tags[0])
                                         if ids else []))
        value = held_out_reward(sampler or rollout_sampler(ctx, rl, rl.policy, section), rl.reward, rl.tokenizer,
                                held[0], max_new_tokens=section.max_new_tokens, stop_ids=rl.stop_ids)
        return {} if value is None else {"val_reward": value}

    def evaluate(step: int) -> dict:
        if rl.task is None:
            return files_reward() if rl.val_prompts else {}
        if not ctx.config.eval.task_samples:
            return {}
        prompts, answers = rl.task.val(ctx.config.eval.task_samples)
        metrics = {"task_acc": task_accuracy(rl.policy, rl.tokenizer, prompts, answers, ctx.device,
                                             max_new_tokens=generation_budget(rl.tokenizer, rl.task.task),
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
                                          max_new_tokens=generation_budget(rl.tokenizer, rl.task.task),
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
    reward_alerts(ctx, stage, step, rl, exp.scores)
    state["health"] = rl.health.state_dict()
    if section.samples_every and step % section.samples_every == 0:
        samples_event(ctx, stage, step, exp, sample_advantages(), rl.think_tags)


def run_rl_loop(ctx: StageContext, stage: str, *, model: torch.nn.Module, policy: torch.nn.Module,
                optimizer: torch.optim.Optimizer, step, section: Any, rl: RLSetup, start_step: int, state: dict,
                extra: dict | None = None) -> str:
    """The training loop of an RL stage (`step` is one iteration) and, when it finishes, the policy's
    final model with its held-out accuracy. `model` is what the optimizer trains (PPO: policy and
    value); FP8 statistics are the policy's; no MFU: an iteration is mostly generation. The reward
    workers stop when the loop ends, however it ends."""
    try:
        outcome, end_step = run_stage_loop(ctx, stage, model, optimizer, step, section, start_step=start_step,
                                           state=state, evaluate=evaluator(ctx, stage, rl, section), hooks_of=policy,
                                           eval_every=eval_every(ctx, section), stop_when=accuracy_target(section))
    finally:
        rl.reward.close()
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
