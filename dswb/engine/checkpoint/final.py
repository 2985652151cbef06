"""`final/<stage>/`: the stage's result as a Hugging Face model + tokenizer directory.

Written to a temporary directory and renamed, so a half-written final model never appears.
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

from dswb.engine.fp8.convert import export_model
from dswb.rundir.manifest import listed_files, verify_dir, write_manifest
from dswb.rundir.space import DiskFull, is_disk_full

MARKER = "dswb_stage.json"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_final(path: Path, model: torch.nn.Module, tokenizer, info: dict) -> Path:
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        export_model(model).save_pretrained(tmp, safe_serialization=True)   # no FP8 wrapper keys
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(info, indent=1, default=str))
        write_manifest(tmp)
        for rel in listed_files(tmp):
            _fsync(tmp / rel)
        _fsync(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync(path.parent)
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
