"""The one hook between loading a model and training it.

Every stage calls `prepare_model` right after building (or loading) each of its models, with the
model's role (policy, reference, value, reward) and whether it trains:
1. placement (`dswb.engine.placement.roles`): on `device`, or spread over several devices with
   `[parallel] mode = "layers"`;
2. the model transforms, in order: each is a `ModelTransform` that changes the model before it
   trains and says what it adds to the loop (`hooks`: metrics, per-step events and alerts, log
   lines). `transforms_for` picks them from the config (today: FP8 linear layers for `[fp8]
   enabled`; LoRA adapters for `[lora]`, `LoraTraining`, which the stage passes since its settings
   and the model's role are the stage's; Mixture-of-Experts balancing and router statistics,
   `MoeTraining`, on every trained model; the stage's own `extras`, e.g. multi-token prediction);
3. in a distributed run (`[parallel] mode = "ddp" | "fsdp" | "pipeline"` under torchrun,
   `dswb.engine.distributed.wrap`) a trained model is made data parallel, sharded or cut to this
   rank's pipeline stage, in place; frozen models stay whole on every rank;
4. `train.compile` compiles the decoder layers, last.
`model_hooks` then gives the stage what the prepared model adds to its loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from dswb.config.adapters import LoraConfig
from dswb.config.schema import Config
from dswb.engine.adapters.lora import adapter_norm, apply_lora, describe, expert_parameters, peft_of, upcast_trainable
from dswb.engine.distributed.pipeline import pipeline_of, stage_flops_per_token
from dswb.engine.distributed.world import active
from dswb.engine.distributed.wrap import describe_distribution, distribute
from dswb.engine.fp8 import apply_fp8
from dswb.engine.fp8.convert import fp8_info
from dswb.engine.fp8.monitor import Fp8Monitor
from dswb.engine.moe.monitor import MoeMonitor, describe_unsupported, plan_moe
from dswb.engine.moe.routers import find_routers
from dswb.engine.placement.roles import Placement
from dswb.engine.telemetry.mfu import model_flops_per_token

TRANSFORMS_ATTR = "_dswb_transforms"
COMPILED_ATTR = "_dswb_compiled"


@dataclass
class ModelHooks:
    """What a prepared model adds to a stage's `LoopParts`."""

    metric_sources: list[Callable[[], dict]] = field(default_factory=list)
    step_hooks: list[Callable[[int], None]] = field(default_factory=list)
    flops_per_token: float = 0.0     # for `tflops` / `mfu`; 0 when the stage gave no context length


class ModelTransform:
    """One change to a model before it trains, and what it then adds to the training loop."""

    name = "transform"

    def apply(self, model: torch.nn.Module, config: Config, device: torch.device) -> torch.nn.Module:
        return model

    def hooks(self, model: torch.nn.Module, ctx, stage: str, probe: Callable[[], float] | None) -> ModelHooks:
        """Log what was done to `model`; return the metric sources and step hooks it adds."""
        return ModelHooks()


class Fp8Training(ModelTransform):
    """`[fp8] enabled`: the trained model's linear layers become FP8 layers (`dswb.engine.fp8`), with
    their statistics, events and alerts in the loop."""

    name = "fp8"

    def apply(self, model: torch.nn.Module, config: Config, device: torch.device) -> torch.nn.Module:
        return apply_fp8(model, config.fp8, device)

    def hooks(self, model: torch.nn.Module, ctx, stage: str, probe: Callable[[], float] | None) -> ModelHooks:
        hooks = ModelHooks()
        info = fp8_info(model)
        if info is None:
            return hooks
        for line in info.log_lines():
            ctx.monitor.log(line, stage=stage)
        if info.stats_supported:
            fp8 = Fp8Monitor(model, ctx.config.fp8, ctx.monitor, stage, probe)
            hooks.metric_sources.append(fp8.metrics)
            hooks.step_hooks.append(fp8.after_step)
        return hooks


class LoraTraining(ModelTransform):
    """Adds the stage's adapters (unless the model arrived with its adapter, when continuing), logs
    what trains, and adds the adapters' weight norm (`adapter_norm`) to the stage's metrics."""

    name = "lora"

    def __init__(self, settings: LoraConfig, role: str, where: str, grown_vocab: bool = False) -> None:
        self.settings, self.role, self.where, self.grown_vocab = settings, role, where, grown_vocab

    def apply(self, model: torch.nn.Module, config, device: torch.device) -> torch.nn.Module:
        if peft_of(model) is not None:      # a continued adapter, loaded with its model
            return upcast_trainable(model)
        return apply_lora(model, self.settings, self.role, self.where, self.grown_vocab)

    def hooks(self, model: torch.nn.Module, ctx, stage: str, probe: Callable[[], float] | None) -> ModelHooks:
        hooks = ModelHooks()
        ctx.monitor.log(f"{self.role}: {describe(self.settings, model)}", stage=stage)
        experts = expert_parameters(model)
        if experts:
            ctx.monitor.log(f"{self.role}: the {len(experts)} Mixture-of-Experts expert tensors (3-D parameters) stay "
                            f"frozen: adapters train the attention and the dense linears", stage=stage)
        key = "adapter_norm" if self.role == "policy" else f"adapter_norm/{self.role}"
        hooks.metric_sources.append(lambda: {key: adapter_norm(model)})
        return hooks


class MoeTraining(ModelTransform):
    """Mixture-of-Experts models (`[moe]`): router losses and the aux-free bias through hooks on the
    routers, routing statistics as `moe` events, metrics and alerts (`dswb.engine.moe`). Nothing on a
    dense model."""

    name = "moe"

    def apply(self, model: torch.nn.Module, config: Config, device: torch.device) -> torch.nn.Module:
        self.plan = plan_moe(model, config.moe)
        self.frozen_bias = self.plan is not None and self.plan.gamma > 0 and peft_of(model) is not None
        if self.frozen_bias:    # an adapter cannot carry the base model's bias: its updates would be lost
            self.plan.gamma = 0.0
        return model

    def hooks(self, model: torch.nn.Module, ctx, stage: str, probe: Callable[[], float] | None) -> ModelHooks:
        hooks = ModelHooks()
        if self.plan is None:
            unsupported = describe_unsupported(model)
            if unsupported:
                ctx.monitor.log(unsupported, stage=stage)
            return hooks
        self.plan.routers = find_routers(model)   # with the routers of transforms applied after this one (MTP)
        cfg = ctx.config.moe
        every = f"statistics every {cfg.stats_every} steps" if cfg.stats_every else "statistics off"
        ctx.monitor.log(f"{self.plan.describe()}; {every}", stage=stage)
        if self.frozen_bias:
            ctx.monitor.log("moe: the aux-free bias stays frozen on adapters (a LoRA adapter cannot carry the base "
                            "model's bias)", stage=stage)
        moe = MoeMonitor(model, self.plan, cfg, ctx.monitor, stage)
        hooks.metric_sources.append(moe.metrics)
        hooks.step_hooks.append(moe.after_step)
        return hooks


def transforms_for(config: Config, role: str, trainable: bool) -> list[ModelTransform]:
    """The transforms the config asks for on a model of `role`, in the order they apply."""
    if not trainable:
        return []
    return ([Fp8Training()] if config.fp8.enabled else []) + [MoeTraining()]


def prepare_model(model: torch.nn.Module, config: Config, device: torch.device,
                  transforms: Sequence[ModelTransform] | None = None, role: str = "policy", trainable: bool = True,
                  placement: Placement | None = None, adapters: ModelTransform | None = None,
                  extras: Sequence[ModelTransform] = ()) -> torch.nn.Module:
    """Place the model, apply its transforms (`adapters`, the stage's `LoraTraining` when `[lora]` is on
    for it, then `transforms_for(config, role, trainable)` unless given, then the stage's own `extras`),
    distribute it and compile it
    (see the module docstring). A stage that builds several models passes one `Placement` to every
    call, with each model's `role` and whether it is trained."""
    placement = placement or Placement(config, device)
    model = placement.place(model, role=role, trainable=trainable)
    applied = transforms_for(config, role, trainable) if transforms is None else list(transforms)
    applied = ([adapters] if adapters is not None else []) + applied + list(extras)
    for transform in applied:
        model = transform.apply(model, config, device)
    object.__setattr__(model, TRANSFORMS_ATTR, applied)   # read by `model_hooks`; not a submodule
    world = active()
    if trainable and world is not None:
        model = distribute(model, config, device, world)
    if config.train.compile:
        compile_model(model)
    return model.train()


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
    placed = describe_distribution(model)
    if placed:
        ctx.monitor.log(placed, stage=stage)
    if context:
        count = stage_flops_per_token if pipeline_of(model) is not None else model_flops_per_token
        hooks.flops_per_token, text = count(model, context)
        ctx.monitor.log(text, stage=stage, event=False)
    compiled = getattr(model, COMPILED_ATTR, None)
    if compiled:
        ctx.monitor.log(f"torch.compile: {compiled} (the first steps compile)", stage=stage)
    for transform in getattr(model, TRANSFORMS_ATTR, []):
        added = transform.hooks(model, ctx, stage, probe)
        hooks.metric_sources += added.metric_sources
        hooks.step_hooks += added.step_hooks
    return hooks
