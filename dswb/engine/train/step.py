"""One optimizer step over one or more micro-batches, separate from the loop around it.

The loss is token-weighted across gradient accumulation: each micro-batch contributes
`sum of token losses / tokens in the whole step`, so the result equals one big batch.
A non-finite loss or gradient skips the update (gradients are dropped) and is reported.

In a distributed run (DDP, FSDP2) each rank sums its own micro-batches' token losses and the step's
target tokens are all-reduced first, so every token of the global batch weighs the same: with the
gradients averaged over R ranks, each rank's loss is scaled by R (`grad_scale`), and the step is the
one-process step over the union of the ranks' micro-batches. DDP all-reduces once per step (the
earlier micro-batches' backward passes run under `no_sync`). A pipeline runs the same step through
its schedule (`pipeline_backward`).

With multi-token prediction (`[mtp]`) the backpropagated sum adds the MTP modules' loss term on the same
token-sum scale (`forward_loss_sums`, `dswb.engine.train.mtp`); the reported loss stays the next-token loss.

`guarded_update` is the one way any stage applies its gradients: clip (or only measure) the
gradient norm, step only when the loss and the norm are finite, zero the gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from dswb.engine.distributed.pipeline import clip_grad_norm as pipeline_grad_norm
from dswb.engine.distributed.pipeline import pipeline_of
from dswb.engine.distributed.world import active
from dswb.engine.distributed.wrap import grad_scale, gradient_sync
from dswb.engine.model.device import autocast
from dswb.engine.model.mtp import final_hidden, mtp_of
from dswb.engine.moe.share import loss_share
from dswb.engine.train.losses import token_loss_sum
from dswb.engine.train.mtp import mtp_loss_term


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    finite: bool
    n_target: int
    n_real: int
    n_padded: int
    n_samples: int


def gradient_norm(params: list[torch.nn.Parameter], clip_grad: float) -> float:
    """The total gradient norm of `params`, clipped in place to `clip_grad` when it is > 0."""
    grads = [p for p in params if p.grad is not None]
    if clip_grad > 0:
        return float(torch.nn.utils.clip_grad_norm_(grads, clip_grad))
    return float(torch.nn.utils.get_total_norm([p.grad for p in grads]))


def guarded_update(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], clip_grad: float,
                   loss_finite: bool = True,
                   norm: Callable[[list[torch.nn.Parameter], float], float] = gradient_norm) -> tuple[float, bool]:
    """Apply the accumulated gradients: (gradient norm, whether the optimizer stepped).

    The norm is measured (and clipped when `clip_grad` > 0) by `norm`; the optimizer steps only when
    `loss_finite` and the norm is finite, and the gradients are dropped either way. In a distributed
    run `loss_finite` must already be the ranks' agreement (the gradients, hence the norm, are shared).
    """
    grad_norm = norm(list(params), clip_grad)
    applied = loss_finite and math.isfinite(grad_norm)
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, applied


def forward_loss_sum(model: torch.nn.Module, batch, amp_dtype, device: torch.device) -> torch.Tensor:
    """The sum of `batch`'s next-token losses: what evaluation and the `loss` metric report."""
    return forward_loss_sums(model, batch, amp_dtype, device, with_mtp=False)[1]


def forward_loss_sums(model: torch.nn.Module, batch, amp_dtype, device: torch.device,
                      with_mtp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sum to backpropagate, the next-token loss sum) of `batch`. With MTP modules on the model
    (`[mtp]`, `mtp_of`) the first adds their loss on the same token-sum scale (`dswb.engine.train.mtp`),
    from the model's last hidden state after its final norm."""
    mtp = mtp_of(model) if with_mtp else None
    with autocast(device, amp_dtype):
        with final_hidden(model, enabled=mtp is not None) as hidden:
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, use_cache=False).logits
        extra = mtp_loss_term(mtp, model, hidden[-1], batch) if mtp is not None else None
    loss_sum = token_loss_sum(logits, batch.labels)
    return (loss_sum if extra is None else loss_sum + extra), loss_sum


def lm_backward(model: torch.nn.Module, micro_batches: list, device: torch.device, amp_dtype) -> float:
    """Forward and backward of every micro-batch, token-weighted over the step (and over the ranks):
    the gradients of the mean token loss of the whole global batch. Returns that loss."""
    world = active()
    local_target = sum(b.n_target for b in micro_batches)
    n_target = int(world.sum([local_target])[0]) if world is not None else local_target
    scale = grad_scale()
    total = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        with gradient_sync(model, i == len(micro_batches) - 1), loss_share(batch.n_target / max(1, local_target)):
            backward_sum, loss_sum = forward_loss_sums(model, batch, amp_dtype, device)
            (backward_sum * scale / max(1, n_target)).backward()
        total += loss_sum.detach()
    return (float(total) if world is None else world.sum([float(total)])[0]) / max(1, n_target)


def pipeline_backward(model: torch.nn.Module, micro_batches: list) -> float:
    """`lm_backward` through the pipeline schedule (the step's loss is the last stage's, shared)."""
    pipe = pipeline_of(model)
    n_target = sum(b.n_target for b in micro_batches)
    total = 0.0
    for batch in micro_batches:
        with loss_share(batch.n_target / max(1, n_target)):
            total += pipe.run(batch, max(1, n_target), backward=True, loss_fn=token_loss_sum)
    return pipe.world.sum([total])[0]     # only the last stage has it


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list,
               device: torch.device, amp_dtype, clip_grad: float) -> StepResult:
    """One LM optimizer step over `micro_batches` (through the pipeline when the model is split)."""
    pipe = pipeline_of(model)
    if pipe is not None:
        loss = pipeline_backward(model, micro_batches)
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm, _ = guarded_update(optimizer, params, clip_grad, math.isfinite(loss),
                                      norm=lambda ps, clip: pipeline_grad_norm(ps, clip, pipe.world))
    else:
        loss = lm_backward(model, micro_batches, device, amp_dtype)
        grad_norm, _ = guarded_update(optimizer, model.parameters(), clip_grad, math.isfinite(loss))
    return StepResult(loss=loss, grad_norm=grad_norm, finite=math.isfinite(loss) and math.isfinite(grad_norm),
                      n_target=sum(b.n_target for b in micro_batches),
                      n_real=sum(b.n_real for b in micro_batches),
                      n_padded=sum(b.n_padded for b in micro_batches),
                      n_samples=sum(b.n_samples for b in micro_batches))
