"""The hook between building a model and training it.

Every stage calls `prepare_model` right after building (or loading) its model. Transforms that
change how a model trains — FP8 linear layers, distributed wrapping (DDP/FSDP) — are added to
`transforms` by the component that owns them; each receives the model, the config and the
device, and returns the model to train. Placement comes first (`dswb.engine.placement.roles`):
`[parallel] mode = "layers"` spreads the model over several devices instead of moving it to one.
Then, from the config: `[fp8] enabled` turns a trained model's linear layers into FP8 layers
(`dswb.engine.fp8`), and `train.compile` compiles the decoder layers, last. In a distributed run
(`[parallel] mode = "ddp" | "fsdp" | "pipeline"` under torchrun, `dswb.engine.distributed.wrap`) a
trained model is then made data parallel, sharded or cut to this rank's pipeline stage, in place;
frozen models (reference, reward) stay whole on every rank. `model_hooks` gives a stage what a
prepared model adds to its loop (FP8 statistics, events and alerts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from dswb.config.schema import Config
from dswb.engine.placement.roles import Placement

ModelTransform = Callable[[torch.nn.Module, Config, torch.device], torch.nn.Module]


def prepare_model(model: torch.nn.Module, config: Config, device: torch.device,
                  transforms: Sequence[ModelTransform] = (), role: str = "policy", trainable: bool = True,
                  placement: Placement | None = None) -> torch.nn.Module:
    """Place the model (on `device`, or over several devices with `[parallel] mode = "layers"`), then
    apply `transforms`. A stage that builds several models passes one `Placement` to every call, with
    each model's `role` (policy, reference, value, reward) and whether it is trained."""
    placement = placement or Placement(config, device)
    model = placement.place(model, role=role, trainable=trainable)
    if trainable and config.fp8.enabled:
        from dswb.engine.fp8 import apply_fp8

        model = apply_fp8(model, config.fp8, device)
    for transform in transforms:
        model = transform(model, config, device)
    from dswb.engine.distributed.world import active

    world = active()
    if trainable and world is not None:
        from dswb.engine.distributed.wrap import distribute

        model = distribute(model, config, device, world)
    if config.train.compile:
        compile_model(model)
    return model.train()


COMPILED_ATTR = "_dswb_compiled"


def compile_model(model: torch.nn.Module) -> None:
    """`torch.compile` each decoder layer in place (torchtitan's per-block compile: one compiled
    graph reused by every layer, module names and state-dict keys unchanged), or the whole model
    when it has no list of layers."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0
             and len({type(layer) for layer in m}) == 1]
    blocks = list(max(lists, key=len)) if lists else [model]
    for block in blocks:
        block.compile()
    setattr(model, COMPILED_ATTR, f"{len(blocks)} x {type(blocks[0]).__name__}")


@dataclass
class ModelHooks:
    """What a prepared model adds to a stage's `LoopParts`."""

    metric_sources: list[Callable[[], dict]] = field(default_factory=list)
    step_hooks: list[Callable[[int], None]] = field(default_factory=list)
    flops_per_token: float = 0.0     # for `tflops` / `mfu`; 0 when the stage gave no context length


def model_hooks(model: torch.nn.Module, ctx, stage: str, probe: Callable[[], float] | None = None,
                context: float | None = None) -> ModelHooks:
    """Log what `prepare_model` did to `model` and return what it adds to the stage's `LoopParts`:

        hooks = model_hooks(model, ctx, STAGE, probe=..., context=mean_sequence_length)
        LoopParts(..., metric_sources=hooks.metric_sources, step_hooks=hooks.step_hooks,
                  flops_per_token=hooks.flops_per_token)

    `probe` (optional) is the loss of a fixed held-out batch, for the FP8 shadow check
    (`fp8.shadow_every`); `context` the mean tokens a training sequence attends over, for the
    FLOPs per token of `mfu` (`dswb.engine.telemetry.mfu`)."""
    hooks = ModelHooks()
    from dswb.engine.distributed.wrap import describe_distribution

    placed = describe_distribution(model)
    if placed:
        ctx.monitor.log(placed, stage=stage)
    if context:
        from dswb.engine.telemetry.mfu import model_flops_per_token
        from dswb.engine.distributed.pipeline import pipeline_of, stage_flops_per_token

        count = stage_flops_per_token if pipeline_of(model) is not None else model_flops_per_token
        hooks.flops_per_token, text = count(model, context)
        ctx.monitor.log(text, stage=stage, event=False)
    compiled = getattr(model, COMPILED_ATTR, None)
    if compiled:
        ctx.monitor.log(f"torch.compile: {compiled} (the first steps compile)", stage=stage)
    from dswb.engine.fp8.convert import fp8_info

    info = fp8_info(model)
    if info is None:
        return hooks
    for line in info.log_lines():
        ctx.monitor.log(line, stage=stage)
    if info.stats_supported:
        from dswb.engine.fp8.monitor import Fp8Monitor

        fp8 = Fp8Monitor(model, ctx.config.fp8, ctx.monitor, stage, probe)
        hooks.metric_sources.append(fp8.metrics)
        hooks.step_hooks.append(fp8.after_step)
    return hooks
