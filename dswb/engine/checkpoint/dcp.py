"""Checkpoints and final models of a distributed run, with `torch.distributed.checkpoint` (DCP).

The checkpoint contract of `dswb.engine.checkpoint.layout` is kept: `checkpoints/<stage>/step-<N>/` appears
under its final name only when complete, its `dswb_manifest.json` (written last) lists every file,
and loading verifies it. Layout: `dcp/` (DCP's `.metadata` and one `__<rank>_0.distcp` file per
rank: the model and optimizer state with their parameter names, sharded as they were trained),
`rng.pt`, `trainer_state.json` (rank 0's: step, data position, counters, statistics), the stage's
extra files, `dswb_manifest.json`. Every rank writes its DCP shard into the temporary directory;
after DCP's own final collective, rank 0 writes the rest, the manifest, fsyncs and renames, and the
ranks wait for it (a barrier), so no rank sees a half-written checkpoint. A run directory shared by
every node is needed on several machines (each rank writes its own shard).

DCP reshards on load: a checkpoint written by 2 FSDP2 ranks loads into 1 process, into 4, into DDP
or a pipeline stage (each takes the parameters it holds), or into a plain single-process run (no
process group). A checkpoint of a single-process run (`model.safetensors`, `optimizer.pt`) loads
into a distributed run too (full state dicts, distributed as the model is).

The final model stays a plain Hugging Face directory: the full state dict is gathered on rank 0,
which writes it with `dswb.engine.checkpoint.final.save_final`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from dswb.engine.adapters.lora import is_adapted
from dswb.engine.checkpoint.layout import (STATE_FILE, Checkpoint, CorruptCheckpoint, prune, rng_state, seal_directory,
                                           set_rng_state, torch_save, verify_checkpoint)
from dswb.engine.distributed.world import World, active
from dswb.engine.distributed.wrap import unwrap_class
from dswb.errors import UserError
from dswb.rundir.space import DiskFull, is_disk_full

DCP_DIR = "dcp"


def is_dcp_checkpoint(path: Path) -> bool:
    return (path / DCP_DIR / ".metadata").is_file()


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """What a DCP checkpoint holds: the model (only what trains, for a model with adapters) and the
    optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    options = StateDictOptions(ignore_frozen_params=is_adapted(model))
    if optimizer is None:
        return {"model": get_model_state_dict(model, options=options)}
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    return {"model": model_sd, "optimizer": optim_sd}


def save_distributed(stage_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     trainer_state: dict, keep_last: int, extra: Callable[[Path], None] | None = None):
    """`save_checkpoint` for a distributed run (every rank calls it)."""
    import torch.distributed.checkpoint as dcp

    world = active()
    final = stage_dir / f"step-{step}"
    tmp = stage_dir / world.broadcast(f".tmp-step-{step}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        if world.is_main:
            stage_dir.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        world.barrier()
        dcp.save(_state(model, optimizer), checkpoint_id=str(tmp / DCP_DIR))
        failure = None
        if world.is_main:
            try:
                torch_save(rng_state(), tmp / "rng.pt")
                (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step, "world_size": world.size,
                                                          "parallel_mode": world.mode}, indent=1))
                if extra is not None:
                    extra(tmp)
                seal_directory(tmp, final)
            except Exception as exc:  # noqa: BLE001 - told to every rank below, raised here
                failure = exc
        told = world.broadcast(None if failure is None else (is_disk_full(failure, stage_dir), str(failure)))
        if failure is not None:
            raise failure
        if told is not None:
            raise DiskFull(final) if told[0] else RuntimeError(f"rank 0 could not finish checkpoint {final}: {told[1]}")
    except BaseException as exc:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, DiskFull) and is_disk_full(exc, stage_dir):
            raise DiskFull(final) from exc
        raise
    if world.is_main:
        prune(stage_dir, keep_last)
    world.barrier()
    return Checkpoint(final, step)


def _verified(ckpt, world: World | None):
    """Rank 0 checks the manifest once, every rank learns the result."""

    if world is None:
        return verify_checkpoint(ckpt)
    return world.broadcast(verify_checkpoint(ckpt) if world.is_main else None)


def load_distributed(ckpt, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device) -> dict:
    """`load_checkpoint` for a DCP checkpoint, or for any checkpoint in a distributed run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict


    world = active()
    result = _verified(ckpt, world)
    if not result.ok:
        raise CorruptCheckpoint(result)
    try:
        if is_dcp_checkpoint(ckpt.path):
            state = _state(model, optimizer)
            dcp.load(state, checkpoint_id=str(ckpt.path / DCP_DIR))
            options = StateDictOptions(strict=not is_adapted(model))    # adapters: the frozen base is not in it
            if optimizer is None:
                set_model_state_dict(model, state["model"], options=options)
            else:
                set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                               options=options)
        else:
            _load_single_process_files(ckpt.path, model, optimizer, device)
    except (RuntimeError, KeyError, ValueError) as exc:
        text = " ".join(str(exc).split())[:240]
        raise UserError(f"{ckpt.path}: the checkpoint does not fit this stage's model (was a setting that shapes "
                        f"the model changed since it was written?): {text}") from None
    set_rng_state(torch.load(ckpt.path / "rng.pt", weights_only=True))
    return json.loads((ckpt.path / STATE_FILE).read_text())


def _load_single_process_files(path: Path, model: torch.nn.Module, optimizer, device: torch.device) -> None:
    """A single-process checkpoint (safetensors + torch optimizer state) into a distributed model."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    own = dict(model.named_parameters())
    full = load_file(str(path / "model.safetensors"), device="cpu")
    partial = any(k not in full for k in own) or any(k not in own for k in full if not k.endswith("inv_freq"))
    options = StateDictOptions(full_state_dict=True, strict=not partial)
    set_model_state_dict(model, {k: v for k, v in full.items() if k in own} if partial else full, options=options)
    if optimizer is None:
        return
    saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {"state": {order[int(i)]: s for i, s in saved["state"].items()},
               "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def full_state_on_main(model: torch.nn.Module, world: World) -> dict | None:
    """The whole model's state dict (CPU tensors) on rank 0, None elsewhere; every rank calls it."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if world.mode == "pipeline":
        own = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        parts: list | None = [None] * world.size if world.is_main else None
        dist.gather_object(own, parts, dst=0, group=world._objects)
        if not world.is_main:
            return None
        merged: dict = {}
        for part in parts:
            merged.update(part)
        return merged
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if world.is_main else None


def plain_copy(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    """A plain transformers model of `model`'s class and config holding `state` (on the CPU)."""
    cls = unwrap_class(model)
    with torch.device("meta"):
        plain = cls(model.config)
    plain.to_empty(device="cpu")
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"gathered state does not match {cls.__name__}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = model.generation_config
    return plain
