"""One optimizer step over one or more micro-batches, separate from the loop around it.

The loss is token-weighted across gradient accumulation: each micro-batch contributes
`sum of token losses / tokens in the whole step`, so the result equals one big batch.
A non-finite loss or gradient skips the update (gradients are dropped) and is reported.

In a distributed run (DDP, FSDP2) each rank sums its own micro-batches' token losses and the step's
target tokens are all-reduced first, so every token of the global batch weighs the same: with the
gradients averaged over R ranks, each rank's loss is scaled by R (`grad_scale`), and the step is the
one-process step over the union of the ranks' micro-batches. DDP all-reduces once per step (the
earlier micro-batches' backward passes run under `no_sync`). A pipeline has its own step
(`dswb.engine.distributed.pipeline.pipeline_train_step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dswb.engine.model.device import autocast
from dswb.engine.train.losses import token_loss_sum
from dswb.engine.distributed.world import active
from dswb.engine.distributed.wrap import grad_scale, gradient_sync


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    finite: bool
    n_target: int
    n_real: int
    n_padded: int
    n_samples: int


def forward_loss_sum(model: torch.nn.Module, batch, amp_dtype, device: torch.device) -> torch.Tensor:
    with autocast(device, amp_dtype):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).logits
    return token_loss_sum(logits, batch.labels)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list,
               device: torch.device, amp_dtype, clip_grad: float) -> StepResult:
    world = active()
    local_target = sum(b.n_target for b in micro_batches)
    n_target = int(world.sum([local_target])[0]) if world is not None else local_target
    scale = grad_scale()
    total = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        with gradient_sync(model, i == len(micro_batches) - 1):
            loss_sum = forward_loss_sum(model, batch, amp_dtype, device)
            (loss_sum * scale / max(1, n_target)).backward()
        total += loss_sum.detach()
    loss = (float(total) if world is None else world.sum([float(total)])[0]) / max(1, n_target)
    params = [p for p in model.parameters() if p.grad is not None]
    if clip_grad > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad))
    else:
        grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss, grad_norm=grad_norm, finite=finite, n_target=local_target,
                      n_real=sum(b.n_real for b in micro_batches),
                      n_padded=sum(b.n_padded for b in micro_batches),
                      n_samples=sum(b.n_samples for b in micro_batches))
