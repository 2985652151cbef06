"""Pipeline parallel with `torch.distributed.pipelining`: each rank trains one stage of the model.

The stage split comes from the layer planner (`plan_layers` over one equal "device" per rank, the
run's `parallel.balance`; `Plan.split_points()` are the stage boundaries): rank 0 holds the
embedding and the first blocks, the last rank the last blocks, the final norm and the head. The
transformers model keeps its shape and parameter names: blocks of other stages are replaced by a
pass-through (`PassThrough`), the embedding of later stages too, the norm and head of earlier
stages by `Identity`. So checkpoints (DCP) name every weight as the whole model does and load into
any other layout, and the stage runs the model's own forward (`inputs_embeds` after the first stage).

Every rank reads the same batches. A batch is cut by rows into `parallel.microbatches` micro-batches
(fewer when the batch has fewer rows) that the schedule (`1f1b` or `gpipe`) runs through the
stages; between stages travel the hidden states, the attention mask and the positions. The
schedule needs micro-batches of one shape, so a batch whose rows do not divide evenly gets up to
n - 1 padding rows (no loss, one visible token: they change no gradient). The loss of
a micro-batch is its token-loss sum divided by the step's target tokens, and the schedule does not
rescale (`scale_grads=False`), so the gradients are those of the whole batch. Gradient clipping
takes the norm over every stage. Evaluation runs the schedule forward only (`eval`); generation
needs the whole model, so the task accuracy is not measured in this mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dswb.engine.distributed.world import World
from dswb.engine.model.device import autocast
from dswb.errors import UserError

PIPELINE_ATTR = "_dswb_pipeline"
NO_MASK = -1          # an attention mask filled with this stands for "no mask" (packed batches)


class PassThrough(torch.nn.Module):
    """Stands for a module of another stage: returns the hidden states it is given."""

    def forward(self, hidden_states=None, *args, **kwargs):
        return hidden_states


class StageModule(torch.nn.Module):
    """One stage: (tokens or hidden states, mask, positions) in; hidden states (and the mask and
    positions, for the next stage) or, on the last stage, logits out."""

    def __init__(self, model: torch.nn.Module, first: bool, last: bool, amp_dtype, device) -> None:
        super().__init__()
        self.model = model
        self.first, self.last = first, last
        self.amp_dtype, self.device = amp_dtype, device

    def forward(self, x, attention_mask, position_ids):
        mask = None if bool((attention_mask[:, :1] == NO_MASK).all()) else attention_mask
        inputs = {"input_ids": x} if self.first else {"inputs_embeds": x}
        with autocast(self.device, self.amp_dtype):
            out = self.model(attention_mask=mask, position_ids=position_ids, use_cache=False, **inputs).logits
        return out if self.last else (out, attention_mask, position_ids)


@dataclass
class Pipeline:
    """A rank's stage and its schedules (one per micro-batch count)."""

    world: World
    module: StageModule
    stage: Any                       # torch.distributed.pipelining.PipelineStage
    schedule_name: str
    microbatches: int
    owned: list[str]                 # unit names of this stage
    boundaries: list[str]            # Plan.split_points()
    normaliser: float = 1.0
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None   # (logits, labels) -> loss sum
    schedules: dict[int, Any] = field(default_factory=dict)

    @property
    def first(self) -> bool:
        return self.module.first

    @property
    def last(self) -> bool:
        return self.module.last

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits, labels) / self.normaliser

    def schedule(self, n: int):
        if n not in self.schedules:
            from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

            cls = Schedule1F1B if self.schedule_name == "1f1b" else ScheduleGPipe
            self.schedules[n] = cls(self.stage, n_microbatches=n, loss_fn=self._loss, scale_grads=False)
        return self.schedules[n]

    def run(self, batch, normaliser: float, backward: bool,
            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        """Push one batch through the stages; returns the summed micro-batch losses `loss_fn(logits,
        labels)` (last stage; 0 elsewhere) divided by `normaliser`. With `backward`, gradients
        accumulate into this stage's parameters."""
        rows = batch.input_ids.shape[0]
        n = max(1, min(self.microbatches, rows))
        schedule = self.schedule(n)
        self.normaliser, self.loss_fn = normaliser, loss_fn
        losses: list = []
        extra = -rows % n
        labels = _pad_rows(batch.labels, extra, IGNORE)
        if self.first:
            ids = batch.input_ids
            mask = batch.attention_mask if batch.attention_mask is not None else torch.full_like(ids, NO_MASK)
            positions = batch.position_ids
            if positions is None:
                positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
            visible = torch.zeros_like(ids[:1])
            visible[:, 0] = 1
            args = (_pad_rows(ids, extra, 0), _pad_rows(mask, extra, visible if batch.attention_mask is not None else NO_MASK),
                    _pad_rows(positions.contiguous(), extra, 0))
        else:
            args = ()
        call = schedule.step if backward else schedule.eval
        call(*args, target=labels if self.last else None, losses=losses)
        return float(sum(float(x.detach()) for x in losses)) if self.last else 0.0


IGNORE = -100


def _pad_rows(t: torch.Tensor, extra: int, fill) -> torch.Tensor:
    """`t` with `extra` rows appended, filled with `fill` (a number or a row)."""
    if not extra:
        return t
    row = fill if isinstance(fill, torch.Tensor) else torch.full_like(t[:1], fill)
    return torch.cat([t, row.expand(extra, -1)]).contiguous()


def pipeline_of(model: torch.nn.Module) -> Pipeline | None:
    return getattr(model, PIPELINE_ATTR, None)


def split(model: torch.nn.Module, config, device: torch.device, world: World) -> torch.nn.Module:
    """Keep this rank's stage of `model` (in place) and attach its `Pipeline`."""
    from torch.distributed.pipelining import PipelineStage

    from dswb.engine.model.device import autocast_dtype
    from dswb.engine.placement.layer_map import model_units, shape_of
    from dswb.engine.placement.memory import memory_model_from_config
    from dswb.engine.placement.planner import DeviceSpec, plan_layers

    if any(u.tied_to for u in model_units(model, shape_of(model))):
        raise UserError("parallel.mode = 'pipeline': the model's head shares its weight with the embedding "
                        "(tie_word_embeddings), which sit on the first and last stages: use ddp or fsdp")
    shape = shape_of(model)
    units = model_units(model, shape)
    if world.size > shape.layers:
        raise UserError(f"parallel.mode = 'pipeline': {world.size} processes but the model has {shape.layers} "
                        f"decoder blocks (a block is never split): use at most {shape.layers} processes")
    plan = plan_layers(shape, memory_model_from_config(config, device.type), [DeviceSpec(f"stage {i}") for i in range(world.size)],
                       config.parallel.balance, model_units=units)
    owned = [u.name for u in plan.devices[world.rank].units]
    first, last = world.rank == 0, world.rank == world.size - 1
    keep = set(owned)
    backbone = model.get_submodule("model")
    for i, layer in enumerate(list(backbone.layers)):
        if f"model.layers.{i}" not in keep:
            backbone.layers[i] = PassThrough()
    if not first:
        backbone.embed_tokens = PassThrough()
    if not last:
        backbone.norm = torch.nn.Identity()
        model.lm_head = torch.nn.Identity()
    module = StageModule(model, first, last, autocast_dtype(device, config.run.precision), device)
    stage = PipelineStage(module, world.rank, world.size, device)
    pipe = Pipeline(world=world, module=module, stage=stage, schedule_name=config.parallel.pipeline_schedule,
                    microbatches=config.parallel.microbatches, owned=owned, boundaries=plan.split_points())
    object.__setattr__(model, PIPELINE_ATTR, pipe)
    return model


def describe(pipe: Pipeline) -> str:
    ranges = ", ".join(pipe.boundaries) or "-"
    return (f"pipeline: {pipe.world.size} stages ({pipe.schedule_name}, up to {pipe.microbatches} micro-batches per "
            f"batch), stages begin at {ranges}; this rank holds {pipe.owned[0]} .. {pipe.owned[-1]}")


def stage_flops_per_token(model: torch.nn.Module, context: float) -> tuple[float, str]:
    """Training FLOPs per token of this rank's stage (its blocks, and the head on the last stage),
    by `dswb.engine.telemetry.mfu`'s count, so the ranks' `tflops` add up to the model's."""
    from dswb.engine.telemetry.mfu import decoder_flops_per_token

    pipe = pipeline_of(model)
    cfg = model.config
    blocks = [m for m in model.get_submodule("model").layers if not isinstance(m, PassThrough)]
    params = sum(p.numel() for b in blocks for p in b.parameters())
    if pipe.last:
        params += sum(p.numel() for p in model.lm_head.parameters())
    heads = getattr(cfg, "num_attention_heads", 0)
    width = heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // max(1, heads))
    flops = decoder_flops_per_token(params, len(blocks), width, context)
    return flops, (f"{flops / 1e6:.4g} MFLOP/token on this stage = 6 x {params:,} matmul params + 12 x {len(blocks)} "
                   f"layers x {width} attn width x {context:.0f} mean context")


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float, world: World) -> float:
    """Clip by the gradient norm over every stage's parameters; returns that norm."""
    grads = [p.grad for p in params if p.grad is not None]
    local = float(torch.nn.utils.get_total_norm(grads)) ** 2 if grads else 0.0
    total = math.sqrt(world.sum([local])[0])
    if max_norm > 0 and grads and math.isfinite(total):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, torch.tensor(total))
    return total
