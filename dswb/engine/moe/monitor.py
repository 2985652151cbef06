"""Mixture-of-Experts balancing and statistics in the training loop.

`MoeTraining.setup` resolves `[moe]` against the model (which family, which balancing, the auxiliary-loss
coefficient; `aux_free` needs DeepSeek-V3's correction bias) and installs `RouterHooks`. `MoeMonitor`
then joins the loop: after every optimizer step (`after_step`) the aux-free bias moves by
`bias_update_speed` from that step's loads (summed over the ranks, so every rank makes the same
update), and every `moe.stats_every` steps the window's statistics (summed over the ranks) become a
`moe` event, `moe/...` metrics and alerts (router collapse, dead experts, rising imbalance). The bias is
a buffer of the model: checkpoints, resume and the final model carry it. In PPO and GRPO a loop step is
one iteration: the bias moves once per iteration, from all of its optimizer steps' tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dswb.engine.distributed.world import active
from dswb.engine.moe.balance import bias_update
from dswb.engine.moe.hooks import LOSSES, LossWeights, RouterHooks
from dswb.engine.moe.routers import Router, find_routers, model_config_of, unsupported_moe
from dswb.engine.moe.stats import (COLLAPSE_EXPLAIN, DEAD_EXPLAIN, RISING_EXPLAIN, DeadTracker, collapsed_expert,
                                   imbalance_rising, layer_summary, scalar_metrics)
from dswb.errors import UserError

DEFAULT_AUX_COEF = 0.001
HISTORY = 64     # imbalance points kept per layer for the rising alert


@dataclass
class MoePlan:
    routers: list[Router]
    balance: str          # aux_free | aux_loss | none
    weights: LossWeights
    gamma: float

    def describe(self) -> str:
        r = self.routers[0]
        what = {"aux_free": f"aux_free (bias speed {self.gamma:g})", "none": "none",
                "aux_loss": f"aux_loss (coef {self.weights.aux:g})"}[self.balance]
        extra = "".join(f", {name} {w:g}" for name, w in (("seq_aux_alpha", self.weights.seq_aux),
                                                           ("z_loss", self.weights.z)) if w)
        return (f"moe: {r.family}, {len(self.routers)} MoE layers x {r.experts} routed experts, top-{r.top_k}; "
                f"balance {what}{extra}")


def plan_moe(model: torch.nn.Module, cfg: Any, where: str = "moe.balance") -> MoePlan | None:
    """`[moe]` resolved for `model`; None for a model without supported routers."""
    routers = find_routers(model)
    if not routers:
        return None
    has_bias = all(r.bias is not None for r in routers)
    balance = cfg.balance if cfg.balance != "auto" else ("aux_free" if has_bias else "aux_loss")
    if balance == "aux_free" and not has_bias:
        raise UserError(f"{where} = aux_free: {routers[0].family} routers have no correction bias (DeepSeek-V3's "
                        f"e_score_correction_bias) to keep it in the saved model; use moe.balance = aux_loss")
    coef = cfg.aux_loss_coef
    if coef < 0:
        coef = float(getattr(model_config_of(model), "router_aux_loss_coef", None) or DEFAULT_AUX_COEF)
    weights = LossWeights(aux=coef if balance == "aux_loss" else 0.0, seq_aux=cfg.seq_aux_alpha, z=cfg.z_loss)
    return MoePlan(routers=routers, balance=balance, weights=weights,
                   gamma=cfg.bias_update_speed if balance == "aux_free" else 0.0)


class MoeMonitor:
    def __init__(self, model: torch.nn.Module, plan: MoePlan, cfg: Any, monitor: Any, stage: str) -> None:
        self.plan, self.cfg, self.monitor, self.stage = plan, cfg, monitor, stage
        self.hooks = RouterHooks(model, plan.routers, plan.weights, collect=cfg.stats_every > 0)
        self.dead = DeadTracker()
        self.history: dict[int, list[float]] = {}
        self.window_steps = 0
        self._pending: dict[str, float] = {}
        self._closed: int | None = None    # the last step closed
        self._alerted: dict[str, dict] = {}    # code -> {key: statistics points since it was last seen}

    def metrics(self) -> dict[str, float]:
        """The `moe/...` metrics of a statistics step. The loop asks for metrics after the optimizer step
        and before the step hooks, so the step is closed here already (the first step of a stage, whose
        number is not known yet, reports with the next metrics)."""
        if self._closed is not None:
            self._close(self._closed + 1)
        out, self._pending = self._pending, {}
        return out

    def after_step(self, step: int) -> None:
        self._close(step)

    def _close(self, step: int) -> None:
        """Once per optimizer step: the step's loads (over the ranks) move the bias and the dead-expert
        counters; on a statistics step the window becomes a `moe` event."""
        if self._closed == step:
            return
        self._closed = step
        world = active()
        step_loads = [c.step_load for c in self.hooks.counts]
        loads = torch.stack(step_loads).double().cpu().tolist()
        if world is not None:
            flat = world.sum([x for load in loads for x in load])
            n = len(loads[0])
            loads = [flat[i * n:(i + 1) * n] for i in range(len(loads))]
        for router, counts, load in zip(self.plan.routers, self.hooks.counts, loads):
            counts.step_load.zero_()
            self.dead.update(router.layer, load)
            if self.plan.gamma and sum(load) > 0 and router.bias is not None:
                with torch.no_grad():
                    router.bias.copy_(bias_update(router.bias, torch.tensor(load, device=router.bias.device),
                                                  self.plan.gamma))
        self.window_steps += 1
        if self.cfg.stats_every and step % self.cfg.stats_every == 0:
            self._report(step, world)

    def _report(self, step: int, world) -> None:
        counts = self.hooks.counts
        local = [float(x) for c in counts for x in (*c.load.tolist(), *c.stats.tolist(), *c.losses.tolist(),
                                                   float(c.forwards))]
        local.append(self.hooks.seconds)
        totals = world.sum(local) if world is not None else local
        seconds = totals.pop()
        layers, losses, at = [], [0.0] * len(LOSSES), 0
        for router in self.plan.routers:
            e = router.experts
            load, (tokens, ent, gate), lsum, forwards = (totals[at:at + e], totals[at + e:at + e + 3],
                                                         totals[at + e + 3:at + e + 3 + len(LOSSES)],
                                                         totals[at + e + 3 + len(LOSSES)])
            at += e + 4 + len(LOSSES)
            bias = router.bias.tolist() if router.bias is not None else None
            layers.append(layer_summary(router.layer, load, tokens, ent, gate, router.top_k,
                                        self.dead.dead(router.layer, self.cfg.dead_after), bias))
            losses = [a + (b / forwards if forwards else 0.0) for a, b in zip(losses, lsum)]
        for c in counts:
            c.reset_window()
        ranks = world.size if world is not None else 1
        hook_ms = 1000.0 * seconds / ranks / max(1, self.window_steps)
        steps, self.window_steps, self.hooks.seconds = self.window_steps, 0, 0.0
        if not any(layer["tokens"] for layer in layers):
            return
        r = self.plan.routers[0]
        self.monitor.emit("moe", self.stage, step, family=r.family, balance=self.plan.balance, experts=r.experts,
                          top_k=r.top_k, steps=steps, hook_ms=round(hook_ms, 4), layers=layers)
        metrics = scalar_metrics(layers)
        weights = (self.plan.weights.aux, self.plan.weights.seq_aux, self.plan.weights.z)
        n = len(layers)
        metrics.update({f"moe/{name}": total / n for name, total, w in zip(LOSSES, losses, weights) if w})
        metrics["moe/hook_ms"] = hook_ms
        self._pending = metrics
        self._alerts(step, layers)

    def _alerts(self, step: int, layers: list[dict]) -> None:
        cfg = self.cfg
        collapsed: dict[tuple[int, int], float] = {}
        dead, rising = set(), set()
        for x in layers:
            history = self.history.setdefault(x["layer"], [])
            history.append(x["imbalance"])
            del history[:-HISTORY]
            top = collapsed_expert(x["load"], x["tokens"], cfg.collapse_share)
            if top is not None:
                collapsed[(x["layer"], top)] = x["load"][top] / x["tokens"]
            dead.update((x["layer"], e) for e in x["dead"])
            if imbalance_rising(history, cfg.imbalance_window, cfg.imbalance_rise):
                rising.add((x["layer"], x["imbalance"]))
        self._raise(step, "moe_collapse", frozenset(collapsed), COLLAPSE_EXPLAIN,
                    lambda s: "router collapse: " + ", ".join(f"layer {l} expert {e} gets {collapsed[l, e]:.0%} of "
                                                              f"the tokens" for l, e in sorted(s)))
        self._raise(step, "moe_dead_experts", frozenset(dead), DEAD_EXPLAIN,
                    lambda s: f"{len(s)} dead experts (no token for {cfg.dead_after} steps): " + ", ".join(
                        f"layer {l} #{e}" for l, e in sorted(s)[:12]) + (" ..." if len(s) > 12 else ""))
        self._raise(step, "moe_imbalance_rising", frozenset(layer for layer, _ in rising), RISING_EXPLAIN,
                    lambda s: "expert load imbalance rising: " + ", ".join(
                        f"layer {l} max/mean {v:.2f}" for l, v in sorted(rising)))

    def _raise(self, step: int, code: str, now: frozenset, explain: str, message) -> None:
        """One alert when a condition appears for a layer or expert that was not already alerted; a key is
        forgotten once it has been clear for `imbalance_window` statistics points in a row, so a value
        hovering at a threshold does not raise again at every crossing."""
        seen = self._alerted.setdefault(code, {})
        for key in list(seen):
            seen[key] = 0 if key in now else seen[key] + 1
            if seen[key] >= self.cfg.imbalance_window:
                del seen[key]
        new = now - set(seen)
        if new:
            self.monitor.alert(self.stage, step, code, message(now), explain)
        seen.update({key: 0 for key in new})


def describe_unsupported(model: torch.nn.Module) -> str | None:
    names = unsupported_moe(model)
    if not names:
        return None
    return (f"moe: {', '.join(names)} found, but dswb watches and balances only the routers of DeepSeek-V3, "
            f"Qwen3-MoE and Mixtral models: no routing statistics or balancing for this model")
