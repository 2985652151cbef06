"""Synthetic post-training events (SFT, reward model, DPO, PPO, GRPO) for fixtures and tests.

What the engine writes per docs/run-directory.md (the events) and docs/post-training.md (the
metrics and alerts of each stage): RL metrics named as TRL names them, reward-model and DPO
metrics, `test_acc` at the end of each LM stage, `pair_acc` for the reward model, bounded `samples`
events and the RL alerts; for a reasoning run (`<think>...</think>answer`), the `reasoning/*`
metrics, a format and an accuracy reward (the accuracy reward failing for a few iterations) with
DAPO's dynamic sampling, and samples with their thinking.
Deterministic for a given `random.Random`. Standard library only.
"""

from __future__ import annotations

import math
import random

RL_STAGES = ("ppo", "grpo")
LM_STAGES = ("pretrain", "sft", "dpo", "ppo", "grpo")
# Held-out exact match at the start and the end of each LM stage: every stage adds to it.
ACCURACY = {"pretrain": (0.0, 0.25), "sft": (0.25, 0.55), "dpo": (0.55, 0.6), "ppo": (0.55, 0.7),
            "grpo": (0.7, 0.86)}


def rl_metrics(stage: str, step: int, total: int, rng: random.Random) -> dict:
    """One iteration's metrics of a PPO or GRPO stage."""
    frac = step / max(total, 1)
    reward = 0.3 + 0.5 * (1 - math.exp(-3 * frac)) + rng.gauss(0, 0.03)
    generation, scoring = 0.05 + rng.uniform(0, 0.01), 0.01 + rng.uniform(0, 0.003)
    ref, update = 0.012 + rng.uniform(0, 0.003), 0.06 + rng.uniform(0, 0.01)
    low, high = max(0.0, 0.02 - 0.01 * frac + rng.gauss(0, 0.002)), max(0.0, 0.03 - 0.015 * frac + rng.gauss(0, 0.002))
    length = 4.0 + rng.uniform(-0.2, 0.2)
    metrics = {
        "loss": round(0.5 - 0.3 * frac + rng.gauss(0, 0.02), 5), "lr": 5e-5, "grad_norm": round(0.4 + abs(rng.gauss(0, 0.05)), 5),
        "reward": round(reward, 4), "reward_std": round(0.35 - 0.15 * frac + rng.uniform(-0.02, 0.02), 4),
        "rewards/exact_match/mean": round(reward, 4),
        "kl": round(0.01 + 0.03 * frac + abs(rng.gauss(0, 0.002)), 5),
        "entropy": round(1.2 - 0.5 * frac + rng.gauss(0, 0.02), 4),
        "clip_ratio/low": round(low, 4), "clip_ratio/high": round(high, 4), "clip_ratio": round(low + high, 4),
        "approx_kl": round(0.002 + abs(rng.gauss(0, 0.0005)), 5), "ratio_mean": round(1 + rng.gauss(0, 0.002), 4),
        "ratio_max": round(1.3 + rng.uniform(0, 0.2), 3),
        "completions/mean_length": round(length, 3), "completions/min_length": 3, "completions/max_length": 5,
        "completions/clipped_ratio": round(max(0.0, 0.05 - 0.05 * frac), 4), "eos_rate": round(min(1.0, 0.95 + 0.05 * frac), 4),
        "policy_loss": round(-0.01 + rng.gauss(0, 0.005), 5),
        "timing/generation_s": round(generation, 4), "timing/scoring_s": round(scoring, 4),
        "timing/ref_logprobs_s": round(ref, 4), "timing/update_s": round(update, 4),
        "completion_tokens_per_s": round(16 * 8 * length / generation, 1),
        "step_time_s": round(generation + scoring + ref + update, 4), "tokens_per_s": round(9000 + rng.uniform(-300, 300), 1),
        "skipped_steps": 0,
    }
    if stage == "ppo":
        metrics.update({"rewards/rm/mean": round(0.2 + 0.6 * frac + rng.gauss(0, 0.02), 4),
                        "value_loss": round(0.2 * math.exp(-2 * frac) + 0.01, 5),
                        "explained_variance": round(0.1 + 0.6 * frac, 4), "value_clip_ratio": round(0.05 * (1 - frac), 4)})
    else:
        metrics["frac_reward_zero_std"] = round(0.5 - 0.3 * frac + rng.uniform(-0.05, 0.05), 4)
    return metrics


def rm_metrics(step: int, total: int, rng: random.Random) -> dict:
    frac = step / max(total, 1)
    chosen, rejected = 0.5 + 1.5 * frac, -0.5 - 1.0 * frac
    return {"loss": round(0.69 * math.exp(-2.5 * frac) + 0.1 + rng.gauss(0, 0.01), 5),
            "accuracy": round(min(1.0, 0.5 + 0.45 * frac + rng.gauss(0, 0.02)), 4),
            "margin": round(chosen - rejected, 4), "reward_chosen": round(chosen, 4), "reward_rejected": round(rejected, 4),
            "lr": 1e-4, "grad_norm": round(0.8 + abs(rng.gauss(0, 0.1)), 4), "step_time_s": 0.08,
            "tokens_per_s": round(12000 + rng.uniform(-300, 300), 1), "skipped_steps": 0}


def eval_metrics(stage: str, step: int, total: int, final: bool) -> dict:
    """An `eval` event's metrics: task_acc (and test_acc at the end) for LM stages, pair
    accuracies for the reward model."""
    frac = step / max(total, 1)
    if stage == "rm":
        acc = round(0.6 + 0.35 * frac, 4)
        return {"pair_acc": acc, "pair_acc_near": round(acc - 0.03, 4), "pair_acc_random": round(min(1.0, acc + 0.03), 4)}
    start, end = ACCURACY.get(stage, (0.0, 0.5))
    acc = round(start + (end - start) * frac ** 1.5, 4)
    metrics = {"val_loss": round(1.0 + 5.5 * math.exp(-3.5 * frac), 4),
               "val_ppl": round(math.exp(1.0 + 5.5 * math.exp(-3.5 * frac)), 3), "task_acc": acc}
    if stage in RL_STAGES:
        metrics = {"task_acc": acc}
    if final:
        metrics["test_acc"] = round(acc - 0.012, 4)
    return metrics


def samples(step: int, rng: random.Random, n: int = 4) -> list[dict]:
    """A `samples` event's rollouts on the built-in addition task."""
    out = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        right = rng.random() < 0.7
        answer = a + b if right else a + b + rng.choice((-10, -1, 1, 10))
        completion = f"{answer:03d}" if i != 3 else f"{answer:03d}{answer:03d}"  # the last one never stops
        reward = 1.0 if right else 0.0
        out.append({"prompt": f"{a}+{b}=", "completion": completion, "reward": reward,
                    "rewards": {"exact_match": reward}, "advantage": round((reward - 0.7) / 0.46, 3),
                    "length": len(completion) + (1 if i != 3 else 0), "ended": i != 3})
    return out


ALERTS = {
    "ppo": ("kl_high", "mean KL to the reference reached 0.041 (bound 0.04) at step {step}",
            "The policy is moving away from the reference model faster than ppo.kl_max allows; lower the "
            "learning rate or raise ppo.kl_coef."),
    "grpo": ("zero_variance_groups", "62% of groups had all-equal rewards at step {step}",
             "Groups whose samples all get the same reward give no learning signal; raise grpo.num_generations "
             "or the sampling temperature, or use a graded reward."),
}


def unscorable_steps(total: int) -> range:
    """The iterations at which a reasoning run's accuracy reward fails for some completions."""
    return range(total // 2, total // 2 + 3)


def reasoning_metrics(step: int, total: int, rng: random.Random) -> dict:
    """What a reasoning run's RL stage adds to (or changes in) an iteration's metrics."""
    frac = step / max(total, 1)
    format_rate = min(1.0, 0.4 + 0.55 * frac + rng.uniform(-0.03, 0.03))
    accuracy = max(0.0, 0.2 + 0.5 * frac ** 1.2 + rng.gauss(0, 0.03))
    think = 40 + 140 * frac + rng.uniform(-5, 5)
    unscorable = 3 if step in unscorable_steps(total) else 0
    return {"reward": round(0.2 * format_rate + accuracy, 4),
            "rewards/format/mean": round(format_rate, 4), "rewards/format/unscorable": 0,
            "rewards/accuracy/mean": round(accuracy, 4), "rewards/accuracy/unscorable": unscorable,
            "reasoning/format_rate": round(format_rate, 4), "reasoning/accuracy": round(accuracy, 4),
            "reasoning/think_mean_tokens": round(think, 1), "reasoning/think_max_tokens": int(2.5 * think),
            "dynamic_sampling/rounds": 1 + int(rng.random() < 0.3 * (1 - frac)), "dynamic_sampling/groups_kept": 8}


def reasoning_samples(step: int, rng: random.Random) -> list[dict]:
    """A reasoning run's `samples` rows: thinking then answer; the third never closes its thinking,
    the fourth does not think at all."""
    out = []
    for i in range(4):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        right = rng.random() < 0.7
        answer = str(a + b if right else a + b + rng.choice((-10, -1, 1, 10)))
        tens_a, tens_b = a // 10 * 10, b // 10 * 10
        think = (f"We need {a}+{b}. Add the units first: {a % 10}+{b % 10}={a % 10 + b % 10}.\n"
                 f"Then the tens: {tens_a}+{tens_b}={tens_a + tens_b}.\nSo the sum is {answer}.")
        if i == 2:
            think, answer = think + " Let me check again: " + think, None
        completion = f"<think>{think}</think>{answer}" if answer is not None else f"<think>{think}"
        reward = 1.2 if right and answer is not None else 0.2 if answer is not None else 0.0
        row = {"prompt": f"What is {a}+{b}?", "completion": completion, "reward": reward,
               "rewards": {"format": 1.0 if answer is not None else 0.0, "accuracy": reward - 0.2 if answer else 0.0},
               "advantage": round((reward - 0.7) / 0.46, 3), "length": len(think.split()) + 4, "ended": i != 2,
               "think": think, "answer": answer, "think_tokens": len(think.split()) + 2}
        if i == 3:
            row.update(completion=answer, think=None, answer=answer, think_tokens=None,
                       rewards={"format": 0.0, "accuracy": 1.0 if right else 0.0}, reward=1.0 if right else 0.0)
        out.append(row)
    return out


REASONING_ALERT = ("reward_unscorable", "reward accuracy could not score 3 of 32 completions at step {step}",
                   ("The reward function raised or timed out; those completions are left out of the update. "
                    "Check the reward's code or its timeout."))
