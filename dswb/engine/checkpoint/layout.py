"""The checkpoint directory contract, shared by the single-process and the distributed writer.

Checkpoints survive `kill -9`: written under a temporary name, renamed when complete. Layout of
`checkpoints/<stage>/step-<N>/`: the model and optimizer (`model.safetensors` + `optimizer.pt` from
one process, `dswb.engine.checkpoint.local`; a `dcp/` directory from torchrun,
`dswb.engine.checkpoint.dcp`), `rng.pt` (RNG states), `trainer_state.json` (step, data position,
counters, streaming statistics), any extra files a stage writes, and last `dswb_manifest.json`
(size and BLAKE2b of every other file, see `dswb.rundir.manifest`). Tensors are saved plain and
loaded with `weights_only=True`, never unpickling objects. The directory only appears under its
final name after every file is written and fsynced (`seal_directory`), so the newest `step-*`
directory is always complete; loading verifies it against its manifest (`CorruptCheckpoint` on a
mismatch; `select_checkpoint` picks the newest that verifies). A full disk during a write removes
the partial directory and raises `DiskFull` naming it.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from dswb.rundir.manifest import (MANIFEST, QUARANTINE_PREFIX, Verification, directory_bytes, listed_files, verify_dir,
                                  write_manifest)
from dswb.rundir.space import checkpoints_room, free_bytes
from dswb.util.atomic import fsync_dir as _fsync_dir, fsync_file as _fsync_file   # names the fault hook patches
from dswb.util.fmt import fmt_bytes

STATE_FILE = "trainer_state.json"
FILES = ("model.safetensors", "optimizer.pt", "rng.pt", STATE_FILE)
LOW_SPACE_CHECKPOINTS = 3   # alert when fewer checkpoints than this still fit


class CorruptCheckpoint(Exception):
    """A checkpoint whose files do not match its manifest."""

    def __init__(self, verification: Verification) -> None:
        self.verification = verification
        super().__init__(f"checkpoint {verification.path} failed verification: " + "; ".join(verification.problems))


@dataclass
class Checkpoint:
    path: Path
    step: int


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


def torch_save(obj, path: Path) -> None:
    # Through a Python file object: a full disk then surfaces as OSError(ENOSPC), chained to
    # torch's "unexpected pos" RuntimeError, instead of being lost inside the C++ writer.
    with open(path, "wb") as f:
        torch.save(obj, f)


def seal_directory(tmp: Path, final: Path) -> None:
    """Make a fully written temporary directory (a checkpoint, a final model) the directory `final`:
    the manifest last, everything synced, then one atomic rename (replacing an older `final`, e.g. a
    checkpoint of the same step after a stop right after a periodic save)."""
    write_manifest(tmp)
    for name in listed_files(tmp):
        _fsync_file(tmp / name)
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and path.name.startswith("step-") and path.name[5:].isdigit()


def list_checkpoints(stage_dir: Path) -> list[Checkpoint]:
    """Checkpoints, oldest first: directories with a manifest (whose files loading verifies) or,
    written before manifests, with every file. Temporary (interrupted) and quarantined
    directories are ignored."""
    if not stage_dir.is_dir():
        return []
    found = []
    for p in stage_dir.iterdir():
        if is_checkpoint_dir(p) and ((p / MANIFEST).is_file() or all((p / name).is_file() for name in FILES)):
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


# Checkpoints verified by this process, with the (name, size, mtime) of each file then: loading
# right after `select_checkpoint` does not read every byte a second time.
_verified: dict[str, tuple] = {}


def _signature(path: Path) -> tuple:
    out = []
    for rel in listed_files(path) + [MANIFEST]:
        try:
            st = (path / rel).stat()
        except OSError:
            return ()
        out.append((rel, st.st_size, st.st_mtime_ns))
    return tuple(out)


def verify_checkpoint(ckpt: Checkpoint) -> Verification:
    """Check `ckpt` against its manifest (`ok`, `unverified` when it has none, or `mismatch`)."""
    signature = _signature(ckpt.path)
    if signature and _verified.get(str(ckpt.path)) == signature:
        return Verification(ckpt.path, "ok", files=len(signature) - 1)
    result = verify_dir(ckpt.path)
    if result.status == "ok":
        _verified[str(ckpt.path)] = signature
    return result


@dataclass
class Selection:
    """What `select_checkpoint` found: the checkpoint to load and those that failed verification."""

    checkpoint: Checkpoint | None
    rejected: list[Verification]
    verification: Verification | None = None   # of `checkpoint` (status ok or unverified)


def select_checkpoint(stage_dir: Path) -> Selection:
    """The newest checkpoint that verifies (or has no manifest), and the newer ones that failed."""
    rejected = []
    for ckpt in reversed(list_checkpoints(stage_dir)):
        result = verify_checkpoint(ckpt)
        if result.ok:
            return Selection(ckpt, rejected, result)
        rejected.append(result)
    return Selection(None, rejected)


def quarantine(path: Path) -> Path:
    """Move a directory that failed verification aside (`corrupt-<name>`), kept for inspection."""
    target = path.with_name(QUARANTINE_PREFIX + path.name)
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{QUARANTINE_PREFIX}{path.name}-{n}")
    os.replace(path, target)
    return target


LOW_SPACE_EXPLAIN = ("Each checkpoint is written whole before older ones are pruned, so the disk must hold "
                     "one more checkpoint than checkpoint.keep_last. When the disk fills, the run fails with "
                     "'no space left on device' and keeps its last complete checkpoint; free space (or lower "
                     "checkpoint.keep_last), then `dswb run --resume` continues.")


def low_space_message(stage_dir: Path) -> tuple[str, str, int] | None:
    """(level, message, room) when the filesystem of `stage_dir` will not hold the next few
    checkpoints of the size of the newest one; None when it will (or nothing is known yet)."""
    checkpoints = list_checkpoints(stage_dir)
    if not checkpoints:
        return None
    size = directory_bytes(checkpoints[-1].path)
    free = free_bytes(stage_dir)
    if free is None or size <= 0:
        return None
    room = checkpoints_room(free, size)
    if room >= LOW_SPACE_CHECKPOINTS:
        return None
    where = f"{fmt_bytes(free)} free on the filesystem of {stage_dir}, a checkpoint takes {fmt_bytes(size)}"
    if room == 0:
        return "error", f"the next checkpoint will not fit: {where}", room
    return "warning", f"room for only {room} more checkpoint{'s' if room > 1 else ''}: {where}", room


def warn_low_space(monitor, stage: str, step: int, stage_dir: Path) -> None:
    """Before a checkpoint: alert (once per change in the room left) when space runs low."""
    low = low_space_message(stage_dir)
    if low is None:
        monitor.forget_alert("disk_space_low", stage)
        return
    level, message, room = low
    monitor.alert_on_change(stage, step, "disk_space_low", message, LOW_SPACE_EXPLAIN, level=level, value=room)


