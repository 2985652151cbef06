"""`final/<stage>/`: the stage's result as a Hugging Face model + tokenizer directory.

`save_final_model` writes it from any run (gathered on rank 0 when the model is sharded), through
`save_final`: written to a temporary directory and renamed, so a half-written final model never appears.
`dswb_manifest.json` (sizes and checksums of every file, `dswb.rundir.manifest`) is written last,
before the rename; `dswb runs verify` and a resume check it. A full disk removes the temporary
directory and raises `DiskFull`. `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load the directory offline (they ignore the two dswb files). A model
trained with multi-token prediction (`[mtp]`) is saved without its MTP modules, which go to
`mtp.safetensors` beside it (and, for a DeepSeek-V3 that transformers loads cleanly that way, also into
DeepSeek's own layout: `dswb.engine.checkpoint.mtp`).

A model with LoRA adapters is saved as its adapter in peft's format (`adapter_config.json`,
`adapter_model.safetensors`; `PeftModel.from_pretrained(base, dir)` and `AutoPeftModelForCausalLM`
load it), with `base_model_name_or_path` set to the base's directory (`info["adapter"]["base"]`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from dswb.engine.adapters.lora import peft_of
from dswb.engine.checkpoint.dcp import full_state_on_main, plain_copy
from dswb.engine.checkpoint.layout import seal_directory
from dswb.engine.checkpoint.mtp import save_pretrained_with_mtp
from dswb.engine.distributed.world import active
from dswb.engine.distributed.wrap import is_ddp
from dswb.engine.fp8.convert import export_model
from dswb.engine.model.load import STAGE_INFO, is_reward_model, load_causal_lm, load_scalar_model, stage_info
from dswb.rundir.manifest import verify_dir
from dswb.rundir.space import DiskFull, is_disk_full

MARKER = STAGE_INFO
MERGED = "merged"      # final/<stage>/merged/: the merged model of a LoRA stage (`lora.merge_final`)


def save_final(path: Path, model: torch.nn.Module, tokenizer, info: dict) -> Path:
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        peft_model = peft_of(model)
        if peft_model is not None:
            save_adapter(peft_model, tmp, info["adapter"]["base"])
        else:
            save_pretrained_with_mtp(export_model(model), tmp)   # no FP8 wrapper keys; MTP modules beside
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(info, indent=1, default=str))
        if peft_model is not None and info["adapter"].get("merge_final"):
            write_merged(tmp, tmp / MERGED)
        seal_directory(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and is_disk_full(exc, path.parent):
            raise DiskFull(path) from exc
        raise
    return path


def write_merged(adapter_dir: Path, out: Path, where: str = "merge") -> Path:
    """The adapter in `adapter_dir` merged into its full-precision base (a QLoRA adapter too), written
    to `out` as a plain model directory (`AutoModelForCausalLM` or, for a reward model,
    `AutoModelForSequenceClassification` loads it)."""
    from transformers import AutoTokenizer

    info = stage_info(adapter_dir)
    loader = load_scalar_model if is_reward_model(adapter_dir) else load_causal_lm
    model = loader(adapter_dir, where)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True)
    merged_info = {k: v for k, v in info.items() if k != "adapter"}
    merged_info["merged_from"] = {"adapter": str(Path(adapter_dir).resolve()), **info.get("adapter", {})}
    if out.parent == Path(adapter_dir):      # inside the final directory being written: sealed with it
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / MARKER).write_text(json.dumps(merged_info, indent=1, default=str))
        return out
    return save_final(out, model, tokenizer, merged_info)


def save_adapter(model: torch.nn.Module, path: Path, base: str) -> None:
    """The trained adapter (`default`; not a frozen `reference` copy) in peft's format, naming `base`."""
    config = model.peft_config["default"]
    config.base_model_name_or_path = str(Path(base).resolve())
    model.save_pretrained(path, selected_adapters=["default"], safe_serialization=True, save_embedding_layers=False)


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
