"""`final/<stage>/`: the stage's result as a Hugging Face model + tokenizer directory.

Written to a temporary directory and renamed, so a half-written final model never appears.
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load it offline.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

MARKER = "dswb_stage.json"


def save_final(path: Path, model: torch.nn.Module, tokenizer, info: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps(info, indent=1, default=str))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()
