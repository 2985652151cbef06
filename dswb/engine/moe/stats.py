"""Routing statistics of Mixture-of-Experts layers and the conditions the alerts watch, as pure functions.

A layer's `load` is the number of tokens each expert received (a token counts once for each of its K
experts); `imbalance` = max load / mean load (1 = perfectly balanced, E / K = every token to the same K
experts). An expert is *dead* after `dead_after` training steps without a token. A layer has
*collapsed* when one expert receives at least `collapse_share` of its tokens. Imbalance is *rising*
when its mean over the last `window` statistics points is `rise` above the mean of the window before,
and above `RISING_FLOOR`.
"""

from __future__ import annotations

import math
from typing import Sequence

RISING_FLOOR = 1.5
COLLAPSE_EXPLAIN = ("One expert receives most of a layer's tokens: the router has collapsed and the other experts stop "
                    "learning. Turn on balancing (moe.balance = aux_free or aux_loss), raise moe.bias_update_speed, "
                    "or lower the learning rate.")
DEAD_EXPLAIN = ("These experts received no token for moe.dead_after steps: their parameters no longer train. "
                "Balancing (moe.balance) brings tokens back to them; a frozen bias (bias_update_speed = 0) cannot.")
RISING_EXPLAIN = ("The layers' max/mean expert load keeps growing: routing is drifting towards fewer experts. "
                  "Check moe.balance and moe.bias_update_speed / moe.aux_loss_coef before it collapses.")


def imbalance(load: Sequence[float]) -> float:
    total = float(sum(load))
    if not load or total <= 0:
        return 1.0
    return max(load) / (total / len(load))


def layer_summary(layer: int, load: Sequence[float], tokens: float, entropy_sum: float, gate_sum: float,
                  top_k: int, dead: Sequence[int], bias: Sequence[float] | None) -> dict:
    """One layer's entry of a `moe` event (docs/run-directory.md)."""
    experts = len(load)
    return {"layer": layer, "tokens": int(tokens), "load": [int(x) for x in load],
            "imbalance": round(imbalance(load), 4),
            "entropy": round(entropy_sum / tokens, 4) if tokens else 0.0,
            "entropy_max": round(math.log(experts), 4) if experts else 0.0,
            "gate_mean": round(gate_sum / (tokens * top_k), 4) if tokens and top_k else 0.0,
            "dead": [int(e) for e in dead],
            "bias": [round(float(b), 6) for b in bias] if bias is not None else None}


def scalar_metrics(layers: list[dict]) -> dict[str, float]:
    """The step's `moe/...` metrics from a `moe` event's layers."""
    if not layers:
        return {}
    entropies = [x["entropy"] / x["entropy_max"] for x in layers if x["entropy_max"]]
    out = {"moe/imbalance": max(x["imbalance"] for x in layers),
           "moe/entropy": sum(entropies) / len(entropies) if entropies else 0.0,
           "moe/dead": float(sum(len(x["dead"]) for x in layers))}
    biases = [abs(b) for x in layers if x["bias"] for b in x["bias"]]
    if biases:
        out["moe/bias_abs"] = sum(biases) / len(biases)
    return out


class DeadTracker:
    """Training steps since each expert of each layer last received a token."""

    def __init__(self) -> None:
        self.idle: dict[int, list[int]] = {}

    def update(self, layer: int, step_load: Sequence[float]) -> None:
        idle = self.idle.setdefault(layer, [0] * len(step_load))
        for e, n in enumerate(step_load):
            idle[e] = 0 if n > 0 else idle[e] + 1

    def dead(self, layer: int, after: int) -> list[int]:
        return [e for e, n in enumerate(self.idle.get(layer, [])) if n >= after]


def collapsed_expert(load: Sequence[float], tokens: float, share: float) -> int | None:
    """The expert that received at least `share` of the layer's tokens, if any."""
    if not tokens or not load:
        return None
    top = max(range(len(load)), key=lambda e: load[e])
    return top if load[top] / tokens >= share else None


def imbalance_rising(history: Sequence[float], window: int, rise: float) -> bool:
    if len(history) < 2 * window:
        return False
    recent = sum(history[-window:]) / window
    before = sum(history[-2 * window:-window]) / window
    return recent > RISING_FLOOR and recent > (1 + rise) * before
