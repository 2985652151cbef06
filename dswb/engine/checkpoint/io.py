"""`save_checkpoint` and `load_checkpoint`: the writer and reader of the run's process layout.

One process writes `model.safetensors` + `optimizer.pt` (`local`); a torchrun run writes DCP shards
(`dcp`). Loading takes either kind in either layout (DCP reshards; a single-process checkpoint loads
into a distributed run as full state dicts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from dswb.engine.checkpoint.dcp import is_dcp_checkpoint, load_distributed, save_distributed
from dswb.engine.checkpoint.layout import Checkpoint
from dswb.engine.checkpoint.local import load_local, save_local
from dswb.engine.distributed.world import active


def save_checkpoint(stage_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, keep_last: int,
                    extra: Callable[[Path], None] | None = None) -> Checkpoint:
    """Write `stage_dir/step-<step>` atomically and prune all but the newest `keep_last` (every rank
    calls it in a distributed run). `extra(directory)` may write more files into the checkpoint
    before the manifest is taken; they are verified like the others."""
    save = save_distributed if active() is not None else save_local
    return save(stage_dir, step, model, optimizer, trainer_state, keep_last, extra)


def load_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    device: torch.device) -> dict:
    """Restore model (and optimizer) and the RNG in place; returns the trainer state. Raises
    `CorruptCheckpoint` (before touching the model) if the files do not match the manifest."""
    if active() is not None or is_dcp_checkpoint(ckpt.path):
        return load_distributed(ckpt, model, optimizer, device)
    return load_local(ckpt, model, optimizer, device)
