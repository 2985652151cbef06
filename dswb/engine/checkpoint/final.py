"""`final/<stage>/`: the stage's result as a Hugging Face model + tokenizer directory.

`save_final_model` writes it from any run (gathered on rank 0 when the model is sharded), through
`save_final`: written to a temporary directory and renamed, so a half-written final model never appears.
`dswb_manifest.json` (sizes and checksums of every file, `dswb.rundir.manifest`) is written last,
before the rename; `dswb runs verify` and a resume check it. A full disk removes the temporary
directory and raises `DiskFull`. `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load the directory offline (they ignore the two dswb files).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from dswb.engine.checkpoint.dcp import full_state_on_main, plain_copy
from dswb.engine.checkpoint.layout import seal_directory
from dswb.engine.distributed.world import active
from dswb.engine.distributed.wrap import is_ddp
from dswb.engine.fp8.convert import export_model
from dswb.engine.model.load import STAGE_INFO
from dswb.rundir.manifest import verify_dir
from dswb.rundir.space import DiskFull, is_disk_full

MARKER = STAGE_INFO


def save_final(path: Path, model: torch.nn.Module, tokenizer, info: dict) -> Path:
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        export_model(model).save_pretrained(tmp, safe_serialization=True)   # no FP8 wrapper keys
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(info, indent=1, default=str))
        seal_directory(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and is_disk_full(exc, path.parent):
            raise DiskFull(path) from exc
        raise
    return path


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def remove_partial(path: Path) -> int:
    """Delete temporary directories of `final/<stage>` left by a process killed mid-write."""
    if not path.parent.is_dir():
        return 0
    partial = [p for p in path.parent.glob(f".tmp-{path.name}-*") if p.is_dir()]
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return len(partial)


def verify_final(path: Path):
    """The final model's `Verification` against its manifest (`dswb.rundir.manifest`)."""
    return verify_dir(path)


def save_final_model(path: Path, model: torch.nn.Module, tokenizer, info: dict) -> Path:
    """`final/<stage>/` as a plain Hugging Face directory, from any run (every rank calls it)."""
    world = active()
    if world is None:
        return save_final(path, model, tokenizer, info)
    failure = None
    if is_ddp(model):
        if world.is_main:
            try:
                save_final(path, model, tokenizer, info)
            except Exception as exc:  # noqa: BLE001 - told to every rank below
                failure = exc
    else:
        state = full_state_on_main(model, world)
        if world.is_main:
            try:
                save_final(path, plain_copy(model, state), tokenizer, info)
            except Exception as exc:  # noqa: BLE001
                failure = exc
    told = world.broadcast(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if told is not None:
        raise RuntimeError(f"rank 0 could not write the final model {path}: {told}")
    return path
