"""`dswb export RUN[:stage]|DIR --merge OUT`: a LoRA stage's adapter merged into its full-precision base,
written as a plain, sealed model directory that loads without peft (the only export today).

The target resolves as `dswb eval` resolves it (`resolve_model`); the merge itself is the engine's
`write_merged` (imported inside the command: `dswb --help` never loads torch). OUT must be new or an
empty directory, outside the adapter's own directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dswb.cli.common import DEFAULT_RUNS_ROOT, RunsRoot, disk_errors, resolve_model, safe_text, user_errors
from dswb.cli.runs_scan import read_adapter
from dswb.errors import UserError
from dswb.util.fmt import fmt_bytes

MergeOut = Annotated[Path | None, typer.Option("--merge", metavar="OUT",
                                               help="Write the adapter merged into its base to this new directory.")]


@user_errors
@disk_errors
def export(
    target: Annotated[str, typer.Argument(help="A LoRA adapter directory, or RUN[:stage] (e.g. latest:sft).")],
    merge: MergeOut = None,
    runs_root: RunsRoot = DEFAULT_RUNS_ROOT,
) -> None:
    """Merge a LoRA stage's adapter into its base and write the full model (loads without peft).

    Examples: `dswb export latest:sft --merge models/sft-merged`, `dswb export runs/<id>/final/grpo --merge out`.
    """
    if merge is None:
        raise UserError(f"export {target}: --merge OUT is required (merging into the base is the only export today)")
    adapter_dir = resolve_model(target, runs_root)
    adapter = read_adapter(adapter_dir)
    if adapter is None:
        raise UserError(f"export {target}: {adapter_dir} is already a full model (no adapter to merge): "
                        f"load it as it is")
    out = merge.expanduser()
    check_output(out, adapter_dir)
    written = merge_quietly(adapter_dir, out, where=f"export {target}")
    architecture, size = model_facts(written)
    typer.echo(f"merged   {adapter_dir}  (LoRA adapter on {safe_text(adapter.get('base') or '?')})")
    typer.echo(f"wrote    {written}  ({architecture}, {fmt_bytes(size)})")
    typer.echo(f"load     {loader_of(architecture)}.from_pretrained({str(written)!r}), no peft needed; "
               f"or `dswb eval {written}`")


def merge_quietly(adapter_dir: Path, out: Path, where: str) -> Path:
    """The engine's `write_merged`, without transformers' weight-loading bar and the deprecation
    warnings peft's loading raises under newer transformers (nothing a user of `export` can act on)."""
    import warnings

    from transformers.utils import logging as hf_logging  # heavy: torch + transformers + peft from here

    from dswb.engine.checkpoint.final import write_merged

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return write_merged(adapter_dir, out, where=where)


def check_output(out: Path, adapter_dir: Path) -> None:
    """OUT must be a new or empty directory, and not inside the adapter directory (sealed by its manifest)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--merge {out}: exists and is not a directory: give a new directory")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--merge {out}: exists and is not empty: give a new or empty directory")
    inside = out.resolve()
    if inside == adapter_dir.resolve() or adapter_dir.resolve() in inside.parents:
        raise UserError(f"--merge {out}: is inside the adapter directory {adapter_dir}: write the merged model "
                        f"elsewhere")


def model_facts(path: Path) -> tuple[str, int]:
    """(architecture from config.json, bytes of its weight files) of a written model directory."""
    try:
        architectures = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        architectures = []
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return (str(architectures[0]) if architectures else "model"), size


def loader_of(architecture: str) -> str:
    """The transformers auto class that loads `architecture`."""
    return "AutoModelForSequenceClassification" if architecture.endswith("ForSequenceClassification") \
        else "AutoModelForCausalLM"
