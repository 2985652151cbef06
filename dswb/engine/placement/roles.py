"""Placing a stage's models: one (pretraining, SFT) or several (policy, reference, value, reward).

`Placement` is created once per stage and places each model as it is built:

    placement = Placement(config, ctx.device)
    policy = prepare_model(policy, config, ctx.device, placement=placement)               # trained
    reference = prepare_model(ref, config, ctx.device, role="reference", trainable=False,
                              placement=placement)

With `[parallel] mode = "none"` a model simply moves to the run's device, or to its role's one
device (`parallel.reference_devices = ["cuda:1"]`: the reference model on a second GPU). With `mode = "layers"`
each role is planned over its devices (`parallel.<role>_devices`, else `parallel.devices`), counting
what the roles placed before it already take on shared devices, and mapped by `layer_map`. A trained
role counts gradients, optimizer state and activations; a frozen one its weights, a working set and
(when it generates) a KV cache. A plan that does not fit stops the stage with one line.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from dswb.config.parallel import role_devices
from dswb.engine.placement.devices import device_specs, resolve_devices, sizes_for
from dswb.engine.placement.layer_map import map_layers, model_units, shape_of
from dswb.engine.placement.memory import MemoryModel, memory_model_from_config
from dswb.engine.placement.planner import Plan, plan_layers
from dswb.engine.placement.report import does_not_fit
from dswb.errors import UserError


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder block in the backward (non-reentrant: works with frozen inputs)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class Placement:
    """Places the models of one stage and remembers the bytes each device already holds."""

    def __init__(self, config, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.used: dict[str, int] = {}
        self.plans: dict[str, Plan] = {}
        self._limits: dict[str, int | None] = {}   # read once: later roles subtract `used`

    def place(self, model: torch.nn.Module, role: str = "policy", trainable: bool = True,
              memory: MemoryModel | None = None) -> torch.nn.Module:
        """Move `model` to its device(s); returns it. `memory` overrides the memory model the
        config implies (e.g. a rollout batch and KV cache for a model that generates)."""
        parallel = self.config.parallel
        if trainable and parallel.activation_checkpointing:
            enable_activation_checkpointing(model)
        if parallel.mode != "layers":
            own = [d for d in getattr(parallel, f"{role}_devices", None) or [] if d != "auto"]
            device = torch.device(own[0]) if own else self.device
            if device.type == "cuda" and not torch.cuda.is_available():
                raise UserError(f"parallel.{role}_devices: {own[0]!r} requested but no CUDA device is available")
            return model.to(device)
        plan, names = self.plan(model, role, trainable, memory)
        map_layers(model, plan, [torch.device(n) for n in names])
        for d in plan.devices:
            self.used[d.device.name] = self.used.get(d.device.name, 0) + d.total
        return model

    def plan(self, model: torch.nn.Module, role: str = "policy", trainable: bool = True,
             memory: MemoryModel | None = None) -> tuple[Plan, list[str]]:
        """The plan for `model` in `role`, given what earlier roles hold; raises when it does not fit."""
        parallel = self.config.parallel
        names = resolve_devices(role_devices(self.config, role))
        if role == "policy" and torch.device(names[0]) != self.device:
            raise UserError(f"parallel.devices: the first device ({names[0]}) holds the embedding and must be "
                            f"the run's device ({self.device})")
        specs = device_specs(names, sizes_for(names, list(parallel.devices), list(parallel.max_memory)), self.used)
        specs = [replace(s, limit=self._limits.setdefault(s.name, s.limit)) for s in specs]
        shape = shape_of(model)
        device_type = "cuda" if any(n.startswith("cuda") for n in names) else "cpu"
        mm = memory or memory_model_from_config(self.config, device_type, trainable)
        plan = plan_layers(shape, mm, specs, parallel.balance, model_units=model_units(model, shape))
        if plan.fits is False:
            raise UserError(f"parallel: the {role} model {does_not_fit(plan)}; `dswb plan` shows the table "
                            f"(raise parallel.max_memory to try anyway)")
        self.plans[role] = plan
        return plan, names
