"""Every RL alert fires on the condition it names, once per onset, and not on healthy metrics."""

from __future__ import annotations

import pytest

from dswb.engine.rl.health import EXPLAIN, RLHealth

HEALTHY = {"kl": 0.02, "clip_ratio": 0.05, "approx_kl": 0.001, "ratio_max": 1.3, "frac_reward_zero_std": 0.2,
           "completions/mean_length": 4.0, "reward": 0.5}


def codes(alerts):
    return [a.code for a in alerts]


def run(health: RLHealth, steps: list[dict]) -> list[str]:
    out = []
    for i, m in enumerate(steps, 1):
        out += codes(health.check(i, m))
    return out


def test_healthy_metrics_raise_nothing():
    assert run(RLHealth(), [HEALTHY] * 20) == []


@pytest.mark.parametrize("code, bad", [
    ("kl_high", {"kl": 2.5}),
    ("clip_spike", {"clip_ratio": 0.6}),
    ("approx_kl_spike", {"approx_kl": 0.4}),
    ("ratio_explosion", {"ratio_max": 80.0}),
])
def test_threshold_alerts_fire_at_onset_then_cool_down(code, bad):
    health = RLHealth(repeat_every=10)
    flicker = [HEALTHY, {**HEALTHY, **bad}, {**HEALTHY, **bad}, HEALTHY, {**HEALTHY, **bad}]
    assert run(health, flicker) == [code]          # onset at 2; 3 and 5 fall within the cool-down
    assert codes(health.check(12, {**HEALTHY, **bad})) == [code]   # 10 iterations later it fires again
    assert EXPLAIN[code]


def test_negative_k1_kl_needs_three_iterations_and_only_under_k1():
    assert run(RLHealth(kl_estimator="k1"), [{**HEALTHY, "kl": -0.05}] * 3) == ["kl_negative"]
    assert run(RLHealth(kl_estimator="k1"), [{**HEALTHY, "kl": -0.05}] * 2) == []
    assert run(RLHealth(kl_estimator="k3"), [{**HEALTHY, "kl": -0.05}] * 5) == []


def test_zero_variance_groups_dominating():
    collapsed = {**HEALTHY, "frac_reward_zero_std": 1.0, "reward": 0.0}
    health = RLHealth()
    assert run(health, [collapsed] * 2) == []
    alerts = health.check(3, collapsed)
    assert codes(alerts) == ["zero_variance_groups"] and "mean reward 0.00" in alerts[0].message


def test_length_collapse_against_the_starting_length():
    health = RLHealth()
    assert run(health, [{**HEALTHY, "completions/mean_length": 40.0}, {**HEALTHY, "completions/mean_length": 30.0}]) == []
    assert codes(health.check(3, {**HEALTHY, "completions/mean_length": 5.0})) == ["length_collapse"]


def test_reward_hacking_needs_reward_up_and_accuracy_down():
    health = RLHealth()
    health.check(1, {**HEALTHY, "reward": 0.2})
    assert health.check_eval(1, {"task_acc": 0.6}) == []                # baseline
    for step in range(2, 12):
        health.check(step, {**HEALTHY, "reward": 0.9})                   # reward climbs (e.g. a learned RM)
    alerts = health.check_eval(12, {"task_acc": 0.1})                    # held-out accuracy collapses
    assert codes(alerts) == ["reward_hacking"] and alerts[0].level == "error"
    honest = RLHealth()
    honest.check(1, {**HEALTHY, "reward": 0.2})
    honest.check_eval(1, {"task_acc": 0.6})
    for step in range(2, 12):
        honest.check(step, {**HEALTHY, "reward": 0.9})
    assert honest.check_eval(12, {"task_acc": 0.8}) == []               # both up: learning, not hacking


def test_missing_or_nonfinite_values_never_fire_and_state_round_trips():
    health = RLHealth()
    assert run(health, [{"kl": float("nan"), "ratio_max": float("inf")}, {}, {"kl": "x"}]) == []
    health.check(1, {**HEALTHY, "kl": 3.0})
    restored = RLHealth()
    restored.load_state_dict(health.state_dict())
    assert codes(restored.check(2, {**HEALTHY, "kl": 3.0})) == []        # still active after a resume
