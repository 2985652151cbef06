"""Checkpoints of a single-process run: `model.safetensors` and `optimizer.pt` beside the files
every checkpoint has (`dswb.engine.checkpoint.layout`).

A model with LoRA adapters saves only what trains (the adapters and the modules trained in full
beside them): its frozen base is the stage's start model, loaded again on resume. The trainer state
then carries `"adapter_only": true`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from dswb.engine.adapters.lora import is_adapted
from dswb.engine.checkpoint.layout import (STATE_FILE, Checkpoint, CorruptCheckpoint, prune, rng_state, seal_directory,
                                           set_rng_state, torch_save, verify_checkpoint)
from dswb.errors import UserError
from dswb.rundir.space import DiskFull, is_disk_full


def save_local(stage_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               trainer_state: dict, keep_last: int,
               extra: Callable[[Path], None] | None = None) -> Checkpoint:
    """Write `stage_dir/step-<step>` atomically and prune all but the newest `keep_last`.

    `extra(directory)` may write more files (e.g. a JSON sidecar) into the checkpoint before
    the manifest is taken; they are verified like the others.
    """
    final = stage_dir / f"step-{step}"
    tmp = stage_dir / f".tmp-step-{step}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        stage_dir.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        adapter_only = is_adapted(model)
        if adapter_only:
            save_file(trainable_state(model), str(tmp / "model.safetensors"))
        else:
            save_model(model, str(tmp / "model.safetensors"))
        torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch_save(rng_state(), tmp / "rng.pt")
        state = {**trainer_state, "step": step, **({"adapter_only": True} if adapter_only else {})}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if extra is not None:
            extra(tmp)
        seal_directory(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and is_disk_full(exc, stage_dir):
            raise DiskFull(final) from exc
        raise
    prune(stage_dir, keep_last)
    return Checkpoint(final, step)


def load_local(ckpt: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
               device: torch.device) -> dict:
    """Restore model (and optimizer) in place; returns the trainer state. RNG is restored too.

    Raises `CorruptCheckpoint` (before touching the model) if the files do not match the manifest.
    """
    result = verify_checkpoint(ckpt)
    if not result.ok:
        raise CorruptCheckpoint(result)
    state = json.loads((ckpt.path / STATE_FILE).read_text())
    if state.get("adapter_only") and not is_adapted(model):
        raise UserError(f"{ckpt.path}: the checkpoint holds LoRA adapters only (written with lora on), but this stage "
                        f"trains the full model: resume with the [lora] settings it was written with")
    try:
        if is_adapted(model):
            load_trainable(model, load_file(str(ckpt.path / "model.safetensors"), device=str(device)))
        else:
            load_model(model, str(ckpt.path / "model.safetensors"), device=str(device))
    except RuntimeError as exc:  # strict loading: the model was built differently (e.g. fp8.enabled changed)
        keys = " ".join(str(exc).split())[:240]
        raise UserError(f"{ckpt.path}: the checkpoint does not fit this stage's model (was a setting that shapes "
                        f"the model, such as fp8.enabled, changed since it was written?): {keys}") from None
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ckpt.path / "optimizer.pt", map_location=device, weights_only=True))
    set_rng_state(torch.load(ckpt.path / "rng.pt", weights_only=True))
    return state


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by state-dict name (contiguous CPU-safe tensors for safetensors)."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put `state` (a `trainable_state`) into `model`: it must hold every trainable parameter, no other."""
    own = {name for name, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(own - state.keys()), sorted(state.keys() - own)
    if missing or extra:
        raise RuntimeError(f"adapter checkpoint: missing {missing[:3]}, unexpected {extra[:3]}")
    model.load_state_dict(state, strict=False)
