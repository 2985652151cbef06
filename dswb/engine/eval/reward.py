"""Held-out reward of an RL stage (PPO, GRPO) trained on files: `val_reward`, the mean reward of
greedy completions of a fixed set of the stage's validation prompts.

- Prompts: the first `HELD_OUT_REWARD_PROMPTS` of the stage's validation prompts (the
  `val_fraction` of its prompt records that `split_records` holds out with the run's seed, never
  trained on), the same ones at every evaluation.
- Completions: one per prompt, greedy (temperature 0: argmax; no top-p, no random numbers), with the
  stage's `max_new_tokens`, stop tokens and rollout sampler (the policy's KV-cached sampler, in
  chunks of `rollout_batch`). Greedy makes the number a function of the weights alone, so two
  evaluations differ only because the policy did.
- Score: the stage's own reward (its sources and weights, combined as in training,
  `dswb.engine.rl.rewards.CombinedReward`); completions no source could score (NaN total) are left
  out of the mean, as they are out of the update; no scorable completion: no metric.

Cost per evaluation: one generation of up to `HELD_OUT_REWARD_PROMPTS` rows and one scoring call,
about what an iteration with that many rollouts spends before its update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from dswb.engine.rl.rewards import RewardInputs, nan_mean

HELD_OUT_REWARD_PROMPTS = 64   # validation prompts completed at each evaluation of an RL stage on files


@dataclass(frozen=True)
class HeldOutPrompts:
    """The fixed prompts of the held-out reward, encoded as the stage encodes its training prompts."""

    records: list            # PromptRecord
    prompt_ids: list[list[int]]
    think_open: list[bool]   # per prompt: it ends inside an open thinking


def held_out_prompts(records: Sequence[Any], prompt_ids: Sequence[list[int]], think_open: Sequence[bool],
                     cap: int = HELD_OUT_REWARD_PROMPTS) -> HeldOutPrompts:
    """The first `cap` validation prompts (all of them when there are fewer)."""
    n = max(0, min(cap, len(records)))
    return HeldOutPrompts(list(records[:n]), [list(p) for p in prompt_ids[:n]], list(think_open[:n]))


def reward_inputs(records: Sequence[Any], completions: list[str], completion_ids: list[list[int]],
                  ended: list[bool], think_open: list[bool], max_new_tokens: int) -> RewardInputs:
    """What a stage's reward scores: one row per completion, `records[i]` being the prompt record of
    completion i; every other field of the records becomes a column (None where a record lacks it)."""
    names = sorted({k for r in records for k in r.fields})
    columns = {k: [r.fields.get(k) for r in records] for k in names}
    return RewardInputs(prompts=[r.prompt for r in records], completions=completions, completion_ids=completion_ids,
                        ended=ended, columns=columns, think_open=think_open, max_new_tokens=max_new_tokens)


def mean_reward(total: torch.Tensor) -> float | None:
    """The mean of the scorable rewards (NaN left out); None when none is."""
    value = nan_mean(total.float())
    return value if math.isfinite(value) else None


def held_out_reward(sampler: Any, reward: Any, tokenizer: Any, held: HeldOutPrompts, *, max_new_tokens: int,
                    stop_ids: Sequence[int]) -> float | None:
    """The mean reward of the greedy completions of `held`'s prompts (None: no prompt, or nothing
    scorable). `sampler` generates like `HFRolloutSampler`; `reward` is the stage's `CombinedReward`."""
    if not held.records:
        return None
    rollouts = sampler.generate(held.prompt_ids, samples_per_prompt=1, max_new_tokens=max_new_tokens,
                                temperature=0.0, stop_ids=list(stop_ids))
    ids = [row[:int(n)] for row, n in zip(rollouts.completion_ids.tolist(), rollouts.lengths.tolist())]
    completions = tokenizer.batch_decode(ids, skip_special_tokens=True)
    order = [int(k) for k in rollouts.prompt_index.tolist()]
    scores = reward(reward_inputs([held.records[k] for k in order], completions, ids, rollouts.ended.tolist(),
                                  [held.think_open[k] for k in order], max_new_tokens))
    return mean_reward(scores.total)
