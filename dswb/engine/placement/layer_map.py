"""Run a plan: move each module to its device and move hidden states at the boundaries.

One process drives every device in turn (no overlap: a device idles while the others work), which is
what lets a model larger than one device train or generate at all. Hooks, not a rewritten forward:
- a pre-hook on the base model (`model.model`) moves the inputs to the embedding's device, so the
  attention mask and rotary embeddings are built there once;
- a pre-hook on every decoder block, the final norm and the head moves its tensor arguments (hidden
  states, mask, position embeddings) to that module's device; the shared ones (mask, rotary) move
  once per device and forward (memo), and `Tensor.to` is differentiable, so the backward pass crosses
  back by itself;
- a hook on the whole model moves its outputs (logits, loss) back to the device of its inputs, so
  losses, sampling and `model.generate` see one device. A KV cache lives with each block's device
  (transformers' `DynamicCache` creates each layer's tensors where its keys are).
Modules outside the planned units (rotary embeddings, ...) go with the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from dswb.engine.placement.planner import Plan
from dswb.engine.placement.shapes import BLOCK, EMBED, HEAD, NORM, ModelShape, Unit, shape_from_hf_config
from dswb.engine.placement.shapes import units as shape_units
from dswb.errors import UserError

ATTRIBUTE = "dswb_layer_map"
LLAMA_STYLE = "layer mapping needs model.embed_tokens, model.layers, model.norm and lm_head (or score)"


class TensorMover:
    """Moves nested tensors to a device; with the memo on (during one forward pass of the whole model)
    each shared tensor moves once per device. The three small methods are the only places that know
    what a "device" is (tests swap them for dtypes, to check every boundary on a CPU-only machine)."""

    def __init__(self) -> None:
        self.memo: dict | None = None
        self.home: Any = None

    def differs(self, tensor: torch.Tensor, device: Any) -> bool:
        return tensor.device != device

    def convert(self, tensor: torch.Tensor, device: Any) -> torch.Tensor:
        return tensor.to(device)

    def location(self, tensor: torch.Tensor) -> Any:
        return tensor.device

    def move(self, obj: Any, device: Any, memo: bool = True) -> Any:
        if isinstance(obj, torch.Tensor):
            if not self.differs(obj, device):
                return obj
            if self.memo is None or not memo:
                return self.convert(obj, device)
            key = (id(obj), device)
            hit = self.memo.get(key)
            if hit is None:
                hit = self.memo[key] = (obj, self.convert(obj, device))  # obj kept alive: its id stays unique
            return hit[1]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(self.move(x, device, memo) for x in obj)
        if isinstance(obj, list):
            return [self.move(x, device, memo) for x in obj]
        if isinstance(obj, dict) and type(obj) is dict:
            return {k: self.move(v, device, memo) for k, v in obj.items()}
        return obj


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for key in ("input_ids", "inputs_embeds"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


@dataclass
class LayerMap:
    """A model's placement: the plan, each unit's device, and the hooks (removable)."""

    plan: Plan
    unit_devices: dict[str, Any]         # unit name -> torch.device
    handles: list = field(default_factory=list)

    def devices(self) -> list[Any]:
        return list(dict.fromkeys(self.unit_devices.values()))

    def remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def layer_map_of(model: torch.nn.Module) -> LayerMap | None:
    return getattr(model, ATTRIBUTE, None)


def shape_of(model: torch.nn.Module) -> ModelShape:
    """The shape of a live transformers model (its config; vocabulary and head from its modules).

    Families the planner does not know are read as Llama-like: parameters are counted from the
    modules anyway (`model_units`), only FLOPs and activation estimates are approximate then. MoE models
    (DeepSeek-V3, Qwen3-MoE, Mixtral) are read as such: their blocks weigh every expert."""
    if not hasattr(model, "config") or not hasattr(model, "get_input_embeddings"):
        raise UserError(f"parallel.mode = 'layers': {type(model).__name__} is not a transformers model; place "
                        f"the models it holds one by one (one Placement, a role each)")
    cfg = model.config.to_dict()
    cfg["vocab_size"] = model.get_input_embeddings().num_embeddings
    name = getattr(model.config, "_name_or_path", "") or cfg.get("model_type", "model")
    try:
        shape = shape_from_hf_config(cfg, name)
    except UserError:
        try:
            shape = shape_from_hf_config({**cfg, "model_type": "llama"}, f"{name} (read as Llama)")
        except UserError:
            raise UserError(f"parallel.mode = 'layers': {type(model).__name__} is not a Llama-style model "
                            f"(llama, mistral, qwen2, qwen3 and look-alikes): {LLAMA_STYLE}") from None
    head = model.get_output_embeddings()
    if head is None and isinstance(getattr(model, "score", None), torch.nn.Linear):
        shape = shape.with_scalar_head()
    return shape


def model_units(model: torch.nn.Module, shape: ModelShape) -> list[Unit]:
    """The planner's units for a live model, with parameters counted from its modules: a shared
    (tied) weight counts once, with the unit that comes first; leftovers count with the embedding."""
    planned = shape_units(shape)
    seen: set[int] = set()
    counted: list[Unit] = []
    for unit in planned:
        try:
            module = model.get_submodule(unit.name)
        except AttributeError:
            raise UserError(f"parallel.mode = 'layers': {type(model).__name__} has no '{unit.name}'; "
                            f"{LLAMA_STYLE}") from None
        own = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in own)
        tied = unit.kind == HEAD and not own and any(True for _ in module.parameters())
        counted.append(replace(unit, params=sum(p.numel() for p in own), tied_to=planned[0].name if tied else ""))
    rest = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    if rest:
        counted[0] = replace(counted[0], params=counted[0].params + rest)
    return counted


def map_layers(model: torch.nn.Module, plan: Plan, devices: list[Any],
               mover: TensorMover | None = None) -> LayerMap:
    """Move `model`'s units to `devices[j]` as `plan` assigns them and install the boundary hooks."""
    mover = mover or TensorMover()
    unit_devices = {name: devices[j] for name, j in plan.assignment().items()}
    kinds = {u.name: u.kind for d in plan.devices for u in d.units}
    home = unit_devices[next(name for name, kind in kinds.items() if kind == EMBED)]

    for name, device in unit_devices.items():
        model.get_submodule(name).to(device)
    for name, module in model.named_modules():
        if not any(name == u or name.startswith(u + ".") for u in unit_devices):
            module._apply(lambda t: mover.move(t, home, memo=False), recurse=False)

    def to_device(device: Any):
        # Positional: the hidden states, new at every block; keyword: mask, position embeddings, ...
        # shared by every block, so moved once per device and forward.
        def hook(module, args, kwargs):
            return mover.move(args, device, memo=False), mover.move(kwargs, device)
        return hook

    def start(module, args, kwargs):
        first = _first_tensor(args, kwargs)
        mover.home = mover.location(first) if first is not None else home
        mover.memo = {}

    def finish(module, args, kwargs, output):
        mover.memo = None
        if mover.home is None or not hasattr(output, "keys"):
            return output
        for key in list(output.keys()):
            if isinstance(output[key], torch.Tensor):
                output[key] = mover.move(output[key], mover.home, memo=False)
        return output

    handles = [model.register_forward_pre_hook(start, with_kwargs=True),
               model.register_forward_hook(finish, with_kwargs=True)]
    base = getattr(model, model.base_model_prefix, None)
    if isinstance(base, torch.nn.Module) and base is not model:
        handles.append(base.register_forward_pre_hook(to_device(home), with_kwargs=True))
    for name, device in unit_devices.items():
        if kinds[name] in (BLOCK, NORM, HEAD):
            handles.append(model.get_submodule(name).register_forward_pre_hook(to_device(device), with_kwargs=True))
    layer_map = LayerMap(plan, unit_devices, handles)
    setattr(model, ATTRIBUTE, layer_map)
    return layer_map


def unmap_layers(model: torch.nn.Module) -> None:
    """Remove the hooks (modules stay where they are)."""
    layer_map = layer_map_of(model)
    if layer_map is not None:
        layer_map.remove_hooks()
        delattr(model, ATTRIBUTE)
