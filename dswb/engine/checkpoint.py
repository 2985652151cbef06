"""Checkpoints that survive `kill -9`: written under a temporary name, renamed when complete.

Layout of `checkpoints/<stage>/step-<N>/`: `model.safetensors` (weights), `optimizer.pt`
(tensors and plain containers only: loaded with `weights_only=True`, never unpickling objects),
`rng.pt` (RNG states, same rule) and `trainer_state.json` (step, data position, counters,
streaming statistics). The directory only appears under its final name after every file is
written and fsynced, so the newest `step-*` directory is always loadable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

STATE_FILE = "trainer_state.json"
FILES = ("model.safetensors", "optimizer.pt", "rng.pt", STATE_FILE)


@dataclass
class Checkpoint:
    path: Path
    step: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(stage_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict, keep_last: int) -> Checkpoint:
    """Write `stage_dir/step-<step>` atomically and prune all but the newest `keep_last`."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    final = stage_dir / f"step-{step}"
    tmp = stage_dir / f".tmp-step-{step}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step}, indent=1))
        for name in FILES:
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. stop right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(stage_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(stage_dir, keep_last)
    return Checkpoint(final, step)


def list_checkpoints(stage_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first. Temporary (interrupted) directories are ignored."""
    if not stage_dir.is_dir():
        return []
    found = []
    for p in stage_dir.iterdir():
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
            if all((p / name).is_file() for name in FILES):
                found.append(Checkpoint(p, int(p.name[5:])))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(stage_dir: Path) -> Checkpoint | None:
    checkpoints = list_checkpoints(stage_dir)
    return checkpoints[-1] if checkpoints else None


def prune(stage_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(stage_dir)[:-keep_last]:
        shutil.rmtree(old.path, ignore_errors=True)


def remove_partial(stage_dir: Path) -> int:
    """Delete temporary directories left by a process killed mid-write; returns how many."""
    if not stage_dir.is_dir():
        return 0
    partial = [p for p in stage_dir.iterdir() if p.name.startswith(".tmp-step-")]
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return len(partial)


def load_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    device: torch.device) -> dict:
    """Restore model (and optimizer) in place; returns the trainer state. RNG is restored too."""
    load_model(model, str(ckpt.path / "model.safetensors"), device=str(device))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ckpt.path / "optimizer.pt", map_location=device, weights_only=True))
    set_rng_state(torch.load(ckpt.path / "rng.pt", weights_only=True))
    return json.loads((ckpt.path / STATE_FILE).read_text())
