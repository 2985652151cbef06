"""What PPO and GRPO need to update one policy from rollouts generated on several ranks (DDP).

Each rank generates its block of the iteration's prompts (`dswb.engine.distributed.sharding`); the
update must still be the one-process update on the whole batch, so:
- every normaliser is global: token and sequence counts of a minibatch (`global_sum`), GRPO's
  advantages (computed from every rank's rewards, `global_advantages`), PPO's whitening
  (`global_whiten`);
- every rank makes the same optimizer steps: the number of minibatches follows the global row
  count (`split_minibatches`, some ranks may hold none of a minibatch), and every rank runs the same
  number of micro-batch backward passes, because DDP all-reduces in each one: a rank with fewer
  pads with zero-weight passes (`micro_plan`'s None entries) that add nothing to the gradient.
With one process every helper is the identity of the single-process code.
"""

from __future__ import annotations

import torch

from dswb.engine.distributed.world import active, rank_share


def global_sum(value: float) -> float:
    world = active()
    return value if world is None else world.sum([value])[0]


def global_all(flag: bool) -> bool:
    world = active()
    return flag if world is None else world.all_true(flag)


def split_minibatches(rows: list[int], minibatches: int) -> list[list[int]]:
    """`rows` cut into this iteration's minibatches: `min(minibatches, rows over all ranks)` nearly
    equal consecutive parts (in one process exactly `chunks(rows, minibatches)`; on a rank holding
    fewer rows than that, some parts are empty)."""
    world = active()
    total = len(rows) if world is None else int(world.sum([len(rows)])[0])
    if total == 0:
        return []
    k = max(1, min(minibatches, total))
    parts = [rows[lo:hi] for lo, hi in (rank_share(len(rows), j, k) for j in range(k))]
    return parts if world is not None else [p for p in parts if p]


def micro_plan(micros: list[list[int]]) -> list[list[int] | None]:
    """This rank's micro-batches, padded with None (a zero-weight pass) to the most any rank has."""
    world = active()
    if world is None:
        return list(micros)
    most = int(world.max([len(micros)])[0])
    return list(micros) + [None] * (most - len(micros))


def gathered(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's `values` concatenated in rank order, and where this rank's begin."""
    world = active()
    if world is None:
        return values, 0
    parts = world.all_gather(values.detach().cpu())
    offset = sum(len(p) for p in parts[:world.rank])
    return torch.cat(parts).to(values.device), offset


def global_advantages(rewards: torch.Tensor, estimator) -> torch.Tensor:
    """`estimator(all rewards)` restricted to this rank's rows: batch-level statistics (batch
    scaling, REINFORCE++'s normalisation) then cover the whole iteration, as in one process."""
    everything, offset = gathered(rewards)
    return estimator(everything)[offset:offset + len(rewards)].to(rewards.device)


def global_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`masked_whiten` with the mean and (Bessel-corrected) variance of every rank's tokens."""
    from dswb.engine.rl.advantages import masked_whiten

    world = active()
    if world is None:
        return masked_whiten(x, mask)
    m = mask.to(x.dtype)
    total, n = world.sum([float((x * m).sum()), float(m.sum())])
    mean = total / max(n, 1.0)
    squares = world.sum([float((((x - mean) ** 2) * m).sum())])[0]
    var = squares / max(n, 1.0)
    if n > 1:
        var = var * n / (n - 1)
    return (x - mean) * torch.rsqrt(torch.tensor(var + eps, dtype=x.dtype, device=x.device)) * m
