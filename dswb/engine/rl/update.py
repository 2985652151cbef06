"""The policy update PPO and GRPO share: passes, minibatches, micro-batches, one guarded update per
minibatch, and the token-weighted diagnostics of the whole iteration.

An iteration's rows are trained in passes (PPO's epochs, each in a fresh order; GRPO's
`num_iterations`, in the same order). Each pass is cut into minibatches by the global row count
(`split_minibatches`, so every rank makes the same optimizer steps), each minibatch into
`grad_accum` micro-batches of the rows that carry signal. The stage supplies the loss of one
micro-batch (`MicroLoss`), already normalised over the whole global minibatch (its `normalisers`),
so the micro-batches add up to the minibatch's loss exactly; the loop scales it for DDP's gradient
averaging, back-propagates, and accumulates the diagnostics. A rank with fewer micro-batches than
another runs the stage's zero-weight pass instead, so that every backward pass meets the other
ranks' all-reduce (`dswb.engine.rl.global_batch`). A minibatch where no row carries signal on any
rank still steps the optimizer, on zero gradients: the same update as with those rows trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from dswb.engine.distributed.wrap import grad_scale
from dswb.engine.moe.share import loss_share
from dswb.engine.rl.global_batch import global_all, global_sum, micro_plan, split_minibatches
from dswb.engine.train.step import guarded_update


@dataclass
class MicroLoss:
    """What the stage computes for one micro-batch."""

    loss: torch.Tensor                      # scalar, normalised over the whole global minibatch
    mask: torch.Tensor                      # [n, T] the tokens that count
    token_terms: dict[str, torch.Tensor]    # per-token diagnostics [n, T], token-averaged over the iteration
    # The loss's parts as numbers (summed, then averaged per optimizer step); their finiteness stands
    # for the loss's, so it is read from the device once. Empty: the loss itself is checked.
    scalars: dict[str, float] = field(default_factory=dict)
    ratio: torch.Tensor | None = None       # [n, T] new / old probability of each token (for `ratio_max`)


class UpdateStats:
    """Token-weighted sums of the diagnostics over every micro-batch of an iteration."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.sums: dict[str, float] = {}
        self.scalars: dict[str, float] = {}
        self.ratio_max = 0.0
        self.updates = 0
        self.finite = True
        self.grad_norms: list[float] = []

    def add(self, micro: MicroLoss) -> None:
        m = micro.mask.to(torch.float32)
        n = float(m.sum())
        if not micro.scalars and not math.isfinite(float(micro.loss.detach())):
            self.finite = False
        for name, value in micro.scalars.items():   # the loss's own parts: read once, checked here
            self.finite &= math.isfinite(value)
            self.scalars[name] = self.scalars.get(name, 0.0) + value
        self.tokens += n
        for name, value in micro.token_terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + float((value * m).sum())
        if micro.ratio is not None and n:
            self.ratio_max = max(self.ratio_max, float((micro.ratio.detach() * m).max()))

    def token_mean(self, name: str) -> float:
        return self.sums.get(name, 0.0) / max(self.tokens, 1.0)

    def step_mean(self, name: str) -> float:
        """The mean per optimizer step of a scalar, added over the ranks (their parts of one loss)."""
        return global_sum(self.scalars.get(name, 0.0)) / max(1, self.updates)

    def finite_everywhere(self) -> bool:
        """Every loss and gradient norm of the iteration finite, on every rank (a collective)."""
        return global_all(self.finite) and all(math.isfinite(g) for g in self.grad_norms)

    @property
    def grad_norm(self) -> float:
        return max(self.grad_norms) if self.grad_norms else 0.0


def chunks(indices: list[int], n: int) -> list[list[int]]:
    """`indices` cut into `n` nearly equal consecutive parts (no empty part)."""
    n = max(1, min(n, len(indices)))
    size, extra = divmod(len(indices), n)
    out, at = [], 0
    for k in range(n):
        take = size + (1 if k < extra else 0)
        out.append(indices[at:at + take])
        at += take
    return [c for c in out if c]


def run_updates(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, passes: Iterable[list[int]], *,
                minibatches: int, grad_accum: int, clip_grad: float,
                normalisers: Callable[[list[int]], Any],
                micro_loss: Callable[[list[int], Any], MicroLoss],
                zero_pass: Callable[[], None],
                has_signal: Callable[[int], bool] | None = None) -> UpdateStats:
    """Train on every pass of rows; returns the iteration's diagnostics.

    `normalisers(minibatch)` is computed once per minibatch (over every rank) and handed to
    `micro_loss(rows, normalisers)`; rows for which `has_signal` is false are left out of the
    forward and backward passes (they must add nothing to the loss or its gradient).
    """
    stats = UpdateStats()
    scale = grad_scale()   # DDP averages gradients over ranks; the stage's normalisers are global already
    for order in passes:
        for minibatch in split_minibatches(order, minibatches):
            norms = normalisers(minibatch)
            work = [i for i in minibatch if has_signal(i)] if has_signal is not None else minibatch
            micros = micro_plan(chunks(work, grad_accum) if work else [])
            if not micros:   # no signal on any rank: the optimizer still steps, on zero gradients
                for p in params:
                    if p.requires_grad:
                        p.grad = torch.zeros_like(p)
            for micro in micros:
                if micro is None:   # another rank has more micro-batches: a pass that adds nothing
                    zero_pass()
                    continue
                with loss_share(len(micro) / len(work)):
                    out = micro_loss(micro, norms)
                (out.loss * scale).backward()
                stats.add(out)
            grad_norm, _ = guarded_update(optimizer, params, clip_grad, global_all(stats.finite))
            stats.grad_norms.append(grad_norm)
            stats.updates += 1
    return stats
