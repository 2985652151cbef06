"""Health checks of an RL run: turn the metrics of each iteration into alerts a user can act on.

`RLHealth.check(step, metrics)` and `RLHealth.check_eval(step, eval_metrics)` return `Alert`s;
the stage emits them as `alert` events. An alert fires at the onset of a condition and then not
again for `repeat_every` iterations, so a persistent or flickering problem is one alert every so
often, not one per iteration. Thresholds come from the stage's config (`alert_*`). The failure signs are
the ones RL users most often ask about (negative k1 KL, KL growth with collapsing outputs, ratio
explosions, zero-std reward groups, response-length collapse) and reward hacking, which a reward
model used alone as the RL reward shows on the built-in task (docs/post-training.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Alert:
    code: str
    message: str
    explain: str
    level: str = "warning"


EXPLAIN = {
    "kl_negative": ("The k1 KL estimate averages to a negative value, which a KL cannot be. The completions were "
                    "not sampled from the policy being scored: check that sampling and scoring use the same "
                    "temperature and model, or switch kl_estimator to k3 (never negative)."),
    "kl_high": ("The policy has moved far from the reference model. Completions may be degenerating. Raise the "
                "KL coefficient (ppo.kl_coef / grpo.beta), lower the learning rate, or read the samples."),
    "clip_spike": ("Many tokens hit the ratio clip: each update moves the policy too far from the one that "
                   "sampled. Lower the learning rate, use fewer epochs / num_iterations, or more minibatches."),
    "approx_kl_spike": ("The policy changed a lot within one iteration (approx-KL between old and new log-probs). "
                        "Lower the learning rate or the number of passes over each rollout batch."),
    "ratio_explosion": ("An importance ratio exploded: a token became far likelier than when it was sampled. "
                        "Lower the learning rate, tighten the clip range, and check for non-finite losses."),
    "zero_variance_groups": ("Most groups got the same reward for every completion, so their advantages are zero "
                             "and they teach nothing. If every completion is wrong, the task is too hard for the "
                             "model or training collapsed (lower the lr); if every one is right, it is too easy: "
                             "use harder prompts or stop. Larger groups (grpo.group_size) help."),
    "length_collapse": ("Completions got much shorter than at the start. The policy may have found that ending "
                        "early scores well (a reward exploit) or collapsed; read the samples and check the rewards."),
    "reward_hacking": ("The training reward rises while held-out task accuracy falls: the policy is exploiting the "
                       "reward (often a learned reward model) instead of solving the task. Add a rule-based reward, "
                       "raise the KL penalty, or retrain the reward model on the policy's own mistakes."),
}


@dataclass
class RLHealth:
    alert_kl: float = 1.0
    alert_clip_ratio: float = 0.3
    alert_approx_kl: float = 0.1
    alert_ratio_max: float = 10.0
    kl_estimator: str = "k1"
    zero_variance_share: float = 0.9      # share of zero-std groups that counts as "dominating"
    zero_variance_patience: int = 3       # iterations in a row before the alert
    length_collapse_ratio: float = 0.3    # mean length below this share of the starting length
    negative_kl_tolerance: float = 1e-3
    hacking_reward_rise: float = 0.05     # reward must rise at least this much (absolute) ...
    hacking_acc_drop: float = 0.05        # ... while held-out accuracy drops this much (absolute)
    repeat_every: int = 50
    _active: dict = field(default_factory=dict)
    _streak: dict = field(default_factory=dict)
    _start_length: float | None = None
    _reward_ema: float | None = None
    _baseline: tuple[float, float] | None = None   # (reward ema, task accuracy) at the first eval

    def _fire(self, step: int, code: str, on: bool, message: str, level: str = "warning") -> list[Alert]:
        """An alert when `on`, unless the same one fired less than `repeat_every` iterations ago
        (a condition that flickers around its threshold is one alert, not one per crossing)."""
        last = self._active.get(code)
        if not on or (last is not None and step - last < self.repeat_every):
            return []
        self._active[code] = step
        return [Alert(code, message, EXPLAIN[code], level)]

    def _persistent(self, code: str, on: bool, patience: int) -> bool:
        self._streak[code] = self._streak.get(code, 0) + 1 if on else 0
        return self._streak[code] >= patience

    def check(self, step: int, m: dict) -> list[Alert]:
        """Alerts from one iteration's metrics (missing or non-finite values never fire)."""
        def get(key: str) -> float | None:
            v = m.get(key)
            return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

        out: list[Alert] = []
        kl, clip, akl, rmax = get("kl"), get("clip_ratio"), get("approx_kl"), get("ratio_max")
        zero, length, reward = get("frac_reward_zero_std"), get("completions/mean_length"), get("reward")
        if kl is not None:
            negative = self.kl_estimator == "k1" and self._persistent("kl_negative", kl < -self.negative_kl_tolerance, 3)
            out += self._fire(step, "kl_negative", negative,
                              f"mean k1 KL to the reference is negative ({kl:.4f}) for 3 iterations")
            out += self._fire(step, "kl_high", kl > self.alert_kl,
                              f"mean KL to the reference is {kl:.3f} (> {self.alert_kl:g})")
        if clip is not None:
            out += self._fire(step, "clip_spike", clip > self.alert_clip_ratio,
                              f"{100 * clip:.1f}% of tokens clipped (> {100 * self.alert_clip_ratio:.0f}%)")
        if akl is not None:
            out += self._fire(step, "approx_kl_spike", akl > self.alert_approx_kl,
                              f"approx-KL between old and new policy is {akl:.3f} (> {self.alert_approx_kl:g})")
        if rmax is not None:
            out += self._fire(step, "ratio_explosion", rmax > self.alert_ratio_max,
                              f"importance ratio reached {rmax:.3g} (> {self.alert_ratio_max:g})", level="error")
        if zero is not None:
            dominating = self._persistent("zero_variance_groups", zero >= self.zero_variance_share,
                                          self.zero_variance_patience)
            out += self._fire(step, "zero_variance_groups", dominating,
                              f"{100 * zero:.0f}% of groups have zero reward variance "
                              f"for {self._streak['zero_variance_groups']} iterations"
                              + (f" (mean reward {reward:.2f})" if reward is not None else ""))
        if length is not None:
            if self._start_length is None:
                self._start_length = length
            collapsed = self._start_length > 1 and length < self.length_collapse_ratio * self._start_length
            out += self._fire(step, "length_collapse", collapsed,
                              f"mean completion length fell to {length:.1f} tokens "
                              f"(from {self._start_length:.1f} at the start)")
        if reward is not None:
            self._reward_ema = reward if self._reward_ema is None else 0.8 * self._reward_ema + 0.2 * reward
        return out

    def check_eval(self, step: int, m: dict) -> list[Alert]:
        """Reward hacking: the reward (EMA) rose while held-out accuracy fell, since the first eval."""
        acc = m.get("task_acc")
        if not isinstance(acc, (int, float)) or not math.isfinite(acc) or self._reward_ema is None:
            return []
        if self._baseline is None:
            self._baseline = (self._reward_ema, float(acc))
            return []
        reward0, acc0 = self._baseline
        hacked = (self._reward_ema - reward0 >= self.hacking_reward_rise) and (acc0 - acc >= self.hacking_acc_drop)
        return self._fire(step, "reward_hacking", hacked,
                          f"reward rose {reward0:.3f} -> {self._reward_ema:.3f} while held-out accuracy fell "
                          f"{100 * acc0:.1f}% -> {100 * acc:.1f}%", level="error")

    def state_dict(self) -> dict:
        return {"active": self._active, "streak": self._streak, "start_length": self._start_length,
                "reward_ema": self._reward_ema, "baseline": list(self._baseline) if self._baseline else None}

    def load_state_dict(self, state: dict) -> None:
        self._active = {k: int(v) for k, v in state.get("active", {}).items()}
        self._streak = {k: int(v) for k, v in state.get("streak", {}).items()}
        self._start_length = state.get("start_length")
        self._reward_ema = state.get("reward_ema")
        base = state.get("baseline")
        self._baseline = tuple(base) if base else None  # type: ignore[assignment]
