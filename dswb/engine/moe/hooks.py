"""Forward hooks on a Mixture-of-Experts model's routers: what each training forward pass routed, and the
router losses it adds.

`RouterHooks` watches the forward passes that train (gradients on, module in training mode; rollouts,
reference and evaluation passes are left alone). A pre-hook on the model keeps the batch's
`attention_mask`, so padding tokens are neither counted nor balanced. Per router and forward pass it
adds, on the router's device and without synchronising:
- the tokens each expert received, for this optimizer step (the aux-free bias update) and for the
  statistics window, with the window's token count, routing-entropy sum and top-k gate-weight sum;
- the router losses (`dswb.engine.moe.balance`): `aux_coef * aux_loss + seq_alpha * seq_aux_loss +
  z_coef * z_loss`, averaged over the layers and weighted by the micro-batch's share of the step
  (`dswb.engine.moe.share`). They reach the gradients through the gate weights the router returns:
  `AddLoss` passes those through unchanged and, in the backward pass, gives the loss gradient 1, so every
  stage's backward carries them without knowing of them (as Megatron-LM's MoEAuxLossAutoScaler).
The time spent inside the hooks is summed in `seconds`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dswb.engine.moe.balance import aux_loss, entropy_sum, expert_counts, routing_probs, seq_aux_loss, z_loss
from dswb.engine.moe.routers import Router, forward_owner
from dswb.engine.moe.share import current_share

LOSSES = ("aux_loss", "seq_aux_loss", "z_loss")


class AddLoss(torch.autograd.Function):
    """`x` unchanged; in the backward pass `loss` (a scalar) also receives gradient 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        ctx.loss_shape, ctx.loss_dtype = loss.shape, loss.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, torch.ones(ctx.loss_shape, dtype=ctx.loss_dtype, device=grad.device)


@dataclass
class LossWeights:
    aux: float = 0.0
    seq_aux: float = 0.0
    z: float = 0.0

    def any(self) -> bool:
        return bool(self.aux or self.seq_aux or self.z)


class LayerCounts:
    """One router's accumulators (tensors on its device)."""

    def __init__(self, router: Router) -> None:
        device = router.module.weight.device
        self.step_load = torch.zeros(router.experts, dtype=torch.int64, device=device)
        self.load = torch.zeros(router.experts, dtype=torch.int64, device=device)
        self.stats = torch.zeros(3, dtype=torch.float64, device=device)     # tokens, entropy sum, gate sum
        self.losses = torch.zeros(len(LOSSES), dtype=torch.float64, device=device)
        self.forwards = 0

    def reset_window(self) -> None:
        self.load.zero_()
        self.stats.zero_()
        self.losses.zero_()
        self.forwards = 0


class RouterHooks:
    def __init__(self, model: torch.nn.Module, routers: list[Router], weights: LossWeights, collect: bool) -> None:
        self.routers, self.weights, self.collect = routers, weights, collect
        self.counts = [LayerCounts(r) for r in routers]
        self.seconds = 0.0
        self._mask: torch.Tensor | None = None
        self._batch = 1
        owner = forward_owner(model)
        self._handles = [owner.register_forward_pre_hook(self._capture, with_kwargs=True)] if owner is not None else []
        for i, router in enumerate(routers):
            self._handles.append(router.module.register_forward_hook(
                lambda module, args, output, i=i: self._on_router(i, module, output)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _capture(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        shape = ids.shape if ids is not None else (embeds.shape[:2] if embeds is not None else None)
        self._batch = int(shape[0]) if shape is not None and len(shape) == 2 else 1
        self._mask = mask.reshape(-1).bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _on_router(self, i: int, module: torch.nn.Module, output):
        if not (torch.is_grad_enabled() and module.training):
            return None
        started = time.perf_counter()
        logits, gates, chosen = output
        router, counts = self.routers[i], self.counts[i]
        mask = self._mask if self._mask is not None and self._mask.numel() == logits.shape[0] else None
        if mask is not None:
            mask = mask.to(logits.device)
        batch = self._batch if logits.shape[0] % max(1, self._batch) == 0 else 1
        losses = self.weights.any() and logits.requires_grad
        probs = routing_probs(logits, router.scoring) if losses else None
        with torch.no_grad():
            step = expert_counts(chosen, router.experts, mask)
            counts.step_load += step
            if self.collect:
                counts.load += step
                p = probs.detach() if probs is not None else routing_probs(logits.detach(), router.scoring)
                w = mask.to(gates.dtype) if mask is not None else torch.ones_like(gates[:, 0])
                counts.stats += torch.stack([w.sum(), entropy_sum(p, mask), (gates.detach() * w[:, None]).sum()]).double()
                counts.forwards += 1
        if losses:
            w = self.weights
            terms = [aux_loss(probs, chosen, mask) if w.aux else None,
                     seq_aux_loss(probs, chosen, batch, mask) if w.seq_aux else None,
                     z_loss(logits, mask) if w.z else None]
            total = sum(c * t for c, t in zip((w.aux, w.seq_aux, w.z), terms) if t is not None)
            if self.collect:
                counts.losses += torch.stack([(t.detach() if t is not None else torch.zeros((), device=logits.device))
                                              .double() for t in terms])
            gates = AddLoss.apply(gates, total * (current_share() / len(self.routers)))
            output = (logits, gates, chosen)
        self.seconds += time.perf_counter() - started
        return output if losses else None
