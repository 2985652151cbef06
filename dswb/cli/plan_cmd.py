"""`dswb plan PRESET [--devices N] [--memory 80GB] [--stage S]`: does the model fit, and how is it split?

Reads the model's shape from the config alone (`model.path` needs only its `config.json`, or a
built-in `model.size`; Mixture-of-Experts models too: total and active parameters, every expert's
memory), so a 70B run can be planned on a laptop. Pure arithmetic: no torch, unless
`parallel.devices = ["auto"]` must be resolved or a GPU's free memory read.

When `[lora]` is on for the planned stage (the first of `run.stages`, or `--stage`), the plan counts
the adapters (fp32) on a frozen base in the run's compute dtype (bf16 on GPUs, fp32 with
`run.precision = "fp32"`; its projections NF4 or int8 for QLoRA), the stage's reference and PPO's value
model, on one device: adapters train in one process or under DDP, where every device holds the whole
model (docs/parallel.md, "Planning adapters").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dswb.cli.common import JsonOut, print_table, user_errors
from dswb.config import load_config
from dswb.config.schema import STAGES
from dswb.errors import UserError
from dswb.presets import find_preset
from dswb.util.atomic import write_json_atomic

EXIT_DOES_NOT_FIT = 1


@user_errors
def plan(
    preset: Annotated[Optional[str], typer.Argument(help="Preset name (`demo`) or TOML file.")] = None,
    devices: Annotated[Optional[int], typer.Option(
        "--devices", "-n", help="Plan for N GPUs (cuda:0..N-1) instead of parallel.devices; give their size "
                                "with --memory.")] = None,
    memory: Annotated[Optional[str], typer.Option(
        "--memory", "-m", help="Memory of each device, e.g. 80GB or 79.6GiB (default: parallel.max_memory, "
                               "else read from the GPUs).")] = None,
    overrides: Annotated[list[str], typer.Option(
        "--set", "-s", help="Override a field: SECTION.KEY=VALUE (repeatable).")] = [],  # noqa: B006
    optimizer_state: Annotated[str, typer.Option("--optimizer-state", help="dtype of AdamW's two moments: fp32 "
                                                 "(what dswb's AdamW keeps) or bf16.")] = "fp32",
    stage: Annotated[Optional[str], typer.Option(
        "--stage", help="Stage to plan (default: the first of run.stages); with lora on for it "
                        "(lora.enabled), the plan counts its adapters, reference and value model.")] = None,
    json_path: JsonOut = None,
) -> None:
    """Print how the model is placed on the devices, layer by layer, and whether it fits.

    Counts weights, gradients, optimizer state, low-precision weight copies and activations for the
    preset's batch shape, per device. Exit status: 0 fits (or a limit is unknown), 1 does not fit,
    2 a user error.

    Examples: `dswb plan demo --devices 2 --memory 1GB`,
    `dswb plan my70b.toml --devices 8 --memory 80GB --set parallel.activation_checkpointing=true`,
    `dswb plan my8b.toml --stage sft --devices 1 --memory 24GB --set lora.enabled=true --set lora.quantize=nf4`
    """
    from dswb.engine.placement.memory import STATE_DTYPES, adapter_stage, memory_model_from_config, trains_adapters
    from dswb.engine.placement.planner import check_device_count, plan_layers, plan_stage
    from dswb.engine.placement.report import (HEADERS, NUMERIC, fit_lines, lora_line, model_line, moe_line, plan_dict,
                                              plan_rows)
    from dswb.engine.placement.shapes import shape_from_config

    if optimizer_state not in STATE_DTYPES:
        raise UserError(f"--optimizer-state: {optimizer_state!r} is not one of {', '.join(STATE_DTYPES)}")
    if preset is None and not overrides:
        raise UserError("give a preset (e.g. `dswb plan demo --devices 2 --memory 1GB`) or --set overrides")
    config = load_config(find_preset(preset) if preset is not None else None, overrides)
    stage = _stage(config, stage)
    shape = shape_from_config(config)
    names, sizes = _devices(config, devices, memory)
    check_device_count(len(names), shape, "--devices" if devices is not None else "parallel.devices")
    from dswb.engine.placement.devices import device_specs

    specs = device_specs(names, sizes, where="--memory" if memory is not None else "parallel.max_memory")
    device_type = "cuda" if any(n.startswith("cuda") for n in names) else "cpu"
    mm = memory_model_from_config(config, device_type, optimizer_state=optimizer_state)
    notes = []
    if trains_adapters(config, stage):
        shape, mm, roles = adapter_stage(config, stage, shape, mm)
        if len(specs) > 1:
            notes.append(f"lora: adapters train in one process or under DDP, where each device holds the whole "
                         f"model: planned on {specs[0].name} alone")
        result = plan_stage(shape, mm, specs[:1], roles, config.parallel.balance)
    else:
        notes += _lora_hint(config, stage)
        result = plan_layers(shape, mm, specs, config.parallel.balance)

    typer.echo(model_line(result))
    if result.shape.moe:
        typer.echo(moe_line(result))
    if mm.lora_r:
        typer.echo(lora_line(result))
    for line in notes:
        typer.echo(line)
    typer.echo(f"memory: {mm.describe()}")
    typer.echo(f"plan: {result.strategy}")
    print_table(HEADERS, plan_rows(result), numeric=NUMERIC)
    for line in fit_lines(result):
        typer.echo(line)
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, plan_dict(result), fsync=False, indent=2)
        typer.echo(f"wrote {json_path}")
    if result.fits is False:
        raise typer.Exit(EXIT_DOES_NOT_FIT)


def _stage(config, stage: str | None) -> str:
    """The stage to plan: `--stage`, else the first of `run.stages`."""
    if stage is None:
        return config.run.stages[0] if config.run.stages else "pretrain"
    if stage not in STAGES:
        raise UserError(f"--stage: {stage!r} is not one of {', '.join(STAGES)}")
    return stage


def _lora_hint(config, stage: str) -> list[str]:
    """A line when `[lora]` is on but the planned stage trains every weight (pretraining from random weights)."""
    from dswb.config.adapters import stage_lora
    from dswb.engine.placement.memory import trains_adapters

    if not stage_lora(config, stage).enabled:
        return []
    others = [s for s in config.run.stages if trains_adapters(config, s)]
    hint = f"; plan {others[0]}'s adapters with --stage {others[0]}" if others else ""
    return [f"lora: {stage} starts from random weights and trains every weight{hint}"]


def _devices(config, count: int | None, memory: str | None) -> tuple[list[str], list[str | None]]:
    """Device names and their sizes (None: read from the device) from the options and the config."""
    max_memory = list(config.parallel.max_memory)
    if count is not None:
        if count < 1:
            raise UserError(f"--devices: expected at least 1, got {count}")
        names = [f"cuda:{i}" for i in range(count)]
        if memory is not None:
            return names, [memory] * count
        if len(max_memory) == 1 or len(max_memory) == count:
            return names, max_memory * count if len(max_memory) == 1 else max_memory
        raise UserError(f"--devices {count}: give the memory of each device with --memory (e.g. --memory 80GB) "
                        f"or parallel.max_memory")
    from dswb.engine.placement.devices import resolve_devices, sizes_for

    names = resolve_devices(list(config.parallel.devices))
    if memory is not None:
        return names, [memory] * len(names)
    return names, sizes_for(names, list(config.parallel.devices), max_memory)
