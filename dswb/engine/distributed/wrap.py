"""A trained model made data parallel (DDP), sharded (FSDP2) or cut into a pipeline stage, in place.

`prepare_model` calls `distribute` for every trained model when the run has a world
(`dswb.engine.distributed.world`). The stage keeps its own transformers object either way: its
`config`, `generate`, `save_pretrained`, `score`, ... all still work, so the stages need no wrapper:
- ddp: PyTorch's `DistributedDataParallel` over the model, driven by hooks on the model's backbone
  (`model.model`), as PyTorch's composable `replicate` drives it on the root: every forward of the
  backbone - whole-model calls, a scalar head's direct `backbone -> score`, generation - goes through
  DDP's `_pre_forward` / `_post_forward`, and the backward all-reduces the gradients (averaged over
  ranks). Buffers are not synchronised in the forward (rotary tables are the same everywhere), so a
  no-grad forward (generation, evaluation) communicates nothing.
- fsdp: `fully_shard` on every decoder block, the backbone (embedding, final norm) and the head, with
  a `MixedPrecisionPolicy` and optional `CPUOffloadPolicy`; each unit gathers its own weights, so
  direct calls of the backbone or the head work as whole-model calls do. Gradients are
  reduce-scattered (averaged over ranks).
- pipeline: `dswb.engine.distributed.pipeline.split` keeps this rank's stage of the model.
Averaging over ranks is why the steps scale their losses by `grad_scale()` (the world size) when
they normalise by global token counts.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from dswb.engine.distributed.world import World, active
from dswb.engine.model.backbone import backbone_of

DDP_ATTR = "_dswb_ddp"


def distribute(model: torch.nn.Module, config, device: torch.device, world: World) -> torch.nn.Module:
    """`model` (already on `device`) made ready for `world.mode`; the same object is returned."""
    if world.mode == "ddp":
        return _ddp(model, device)
    if world.mode == "fsdp":
        return _fsdp(model, config, device, world)
    from dswb.engine.distributed.pipeline import split

    return split(model, config, device, world)


def _ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # no buffer broadcast in the forward (torch 2.13 renamed the switch)
    quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
             else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **quiet)

    def pre(module, args, kwargs):
        args, kwargs = ddp._pre_forward(*args, **kwargs)
        return tuple(args), kwargs

    def post(module, args, kwargs, output):
        return ddp._post_forward(output)

    inner = backbone_of(model)
    inner.register_forward_pre_hook(pre, with_kwargs=True)
    inner.register_forward_hook(post, with_kwargs=True)
    object.__setattr__(model, DDP_ATTR, ddp)   # kept alive, but not a submodule (no `_dswb_ddp.*` state-dict keys)
    return model


def fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules sharded as units, innermost first: each decoder block, the backbone, the head."""
    backbone = backbone_of(model)
    layers = getattr(backbone, "layers", None)
    units = list(layers) if isinstance(layers, torch.nn.ModuleList) else []
    if backbone is not model:
        units.append(backbone)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None and isinstance(getattr(model, "score", None), torch.nn.Module):
        head = model.score
    if head is not None and backbone is not model:
        units.append(head)
    return units or [model]


def fsdp_dtype(config, device: torch.device) -> torch.dtype:
    choice = config.parallel.fsdp_precision
    if choice == "auto":
        from dswb.engine.model.device import autocast_dtype

        return autocast_dtype(device, config.run.precision) or torch.float32
    return torch.bfloat16 if choice == "bf16" else torch.float32


def _fsdp(model: torch.nn.Module, config, device: torch.device, world: World) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh

    CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard = _fsdp2()

    p = config.parallel
    mesh = init_device_mesh(device.type, (world.size,))
    policy = MixedPrecisionPolicy(param_dtype=fsdp_dtype(config, device), reduce_dtype=torch.float32)
    kwargs: dict[str, Any] = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": p.fsdp_reshard_after_forward}
    if p.fsdp_cpu_offload:
        if device.type != "cuda":
            from dswb.errors import UserError

            raise UserError("parallel.fsdp_cpu_offload moves FSDP2's GPU shards to CPU memory: this run has no GPU")
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for unit in fsdp_units(model):
        fully_shard(unit, **kwargs)
    return model


def _fsdp2():
    """FSDP2's entry points (public in torch >= 2.6, `_composable` before)."""
    try:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    except ImportError:  # pragma: no cover - torch 2.5
        from torch.distributed._composable.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    return CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard


def is_ddp(model: torch.nn.Module) -> bool:
    return getattr(model, DDP_ATTR, None) is not None


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """DDP: with `enabled` False the backward keeps gradients local (accumulated), and the next
    synchronised backward all-reduces the sum (`DistributedDataParallel.no_sync`). Other models
    synchronise every backward."""
    ddp = getattr(model, DDP_ATTR, None)
    if ddp is None or enabled:
        yield
        return
    with ddp.no_sync():
        yield


def grad_scale() -> int:
    """What a loss normalised by GLOBAL counts is multiplied by before its backward: DDP and FSDP
    average gradients over the ranks, so the world size undoes that; 1 otherwise."""
    world = active()
    return 1 if world is None or world.mode == "pipeline" else world.size


def unwrap_class(model: torch.nn.Module) -> type:
    """The model's own class (FSDP2 swaps in a subclass `FSDP<Name>`)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch 2.5
        from torch.distributed._composable.fsdp import FSDPModule
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def describe_distribution(model: torch.nn.Module) -> str | None:
    """One log line saying how this trained model is spread over the ranks (None: it is not)."""
    world = active()
    if world is None:
        return None
    if is_ddp(model):
        return f"ddp: a replica on each of {world.size} ranks, gradients all-reduced (averaged) every step"
    from dswb.engine.distributed.pipeline import describe, pipeline_of

    pipe = pipeline_of(model)
    if pipe is not None:
        return describe(pipe)
    units = [m for m in model.modules() if unwrap_class(m) is not type(m)]
    if units:
        return (f"fsdp: {len(units)} units fully sharded over {world.size} ranks (each block, the backbone, the head); "
                f"weights gathered per unit, gradients reduce-scattered")
    return None
