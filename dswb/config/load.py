"""Load a preset: TOML -> `Config`, with `--set key=value` overrides and validation.

Every problem is a `UserError` naming the file (or `--set`) and the dotted key:
unknown keys (with a suggestion), wrong types, values out of range or not among the choices,
and impossible combinations.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import tomllib
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from dswb.config.adapters import LoraConfig, validate_lora
from dswb.config.parallel import DISTRIBUTED_MODES, validate_parallel
from dswb.config.posttrain import check_stage_order, validate_posttrain
from dswb.config.schema import STAGES, Config
from dswb.errors import UserError


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in fields(cls)}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotated type; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is list:
        if isinstance(value, str) and typing.get_args(tp)[0] is str:
            value = [value]     # `target_modules = "all-linear"`: one item
        if not isinstance(value, list):
            raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise UserError(f"{where}: must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _check_bounds(value: Any, meta: dict, where: str) -> None:
    choices = meta.get("choices")
    if choices and value not in choices:
        raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            lo, hi = meta.get("min"), meta.get("max")
            if lo is not None and item < lo:
                raise UserError(f"{where}: must be >= {lo}, got {item!r}")
            if hi is not None and item > hi:
                raise UserError(f"{where}: must be <= {hi}, got {item!r}")


def _unknown(key: str, known: list[str], where: str) -> UserError:
    close = difflib.get_close_matches(key.split(".")[-1], [k.split(".")[-1] for k in known], n=1)
    hint = ""
    if close:
        prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
        hint = f" (did you mean '{prefix}{close[0]}'?)"
    return UserError(f"{where}: unknown key '{key}'{hint}")


def _set_field(section: Any, section_name: str, key: str, value: Any, where: str) -> None:
    types = _field_types(type(section))
    head, dot, rest = key.partition(".")
    if head == "lora" and "lora" in types:     # `[sft.lora]` table, or `--set sft.lora.r=8`
        if dot:
            value = {rest: value}
        elif not isinstance(value, dict):
            raise UserError(f"{where}: {section_name}.lora must be a table ([{section_name}.lora]), got {value!r}")
        _set_stage_lora(section, section_name, value, where)
        return
    if key not in types:
        raise _unknown(f"{section_name}.{key}", [f"{section_name}.{k}" for k in types], where)
    tp, fld = types[key]
    full = f"{where}: {section_name}.{key}"
    coerced = _coerce(value, tp, full)
    _check_bounds(coerced, fld.metadata, full)
    setattr(section, key, coerced)


def _set_stage_lora(section: Any, section_name: str, changes: dict, where: str) -> None:
    """Record a stage's changes to `[lora]`, each checked as the `[lora]` field it changes."""
    scratch = LoraConfig()
    for key, value in changes.items():
        _set_field(scratch, f"{section_name}.lora", key, value, where)
        section.lora[key] = getattr(scratch, key)


def apply_mapping(config: Config, data: dict, where: str) -> None:
    """Apply a parsed TOML mapping (`{section: {key: value}}`) onto `config`."""
    section_names = [f.name for f in fields(Config)]
    for name, table in data.items():
        if name not in section_names:
            raise _unknown(name, section_names, where)
        if not isinstance(table, dict):
            raise UserError(f"{where}: '{name}' must be a table ([{name}]), got {table!r}")
        section = getattr(config, name)
        for key, value in table.items():
            _set_field(section, name, key, value, where)


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`["train.lr=3e-4", "run.name=x"]` -> `[("train.lr", 0.0003), ("run.name", "x")]`.

    Values are read as TOML (numbers, booleans, lists, quoted strings); anything TOML cannot read
    is taken as a bare string.
    """
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or "." not in key:
            raise UserError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=3e-4")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        parsed.append((key, value))
    return parsed


def apply_overrides(config: Config, overrides: list[tuple[str, Any]]) -> None:
    section_names = [f.name for f in fields(Config)]
    for key, value in overrides:
        section_name, _, field_name = key.partition(".")
        where = f"--set {key}"
        if section_name not in section_names:
            raise _unknown(section_name, section_names, where)
        _set_field(getattr(config, section_name), section_name, field_name, value, "--set")


def validate(config: Config, where: str) -> None:
    """Checks that involve more than one field."""
    for stage in config.run.stages:
        if stage not in STAGES:
            raise UserError(f"{where}: run.stages: unknown stage '{stage}' (available: {', '.join(STAGES)})")
    if not config.run.stages:
        raise UserError(f"{where}: run.stages: at least one stage is needed")
    order_error = check_stage_order(config.run.stages, STAGES)
    if order_error:
        raise UserError(f"{where}: run.stages: {order_error}")
    d = config.data
    if d.chunk_overlap >= d.chunk_size:
        raise UserError(f"{where}: data.chunk_overlap ({d.chunk_overlap}) must be smaller than data.chunk_size ({d.chunk_size})")
    if d.min_chunk > d.chunk_size:
        raise UserError(f"{where}: data.min_chunk ({d.min_chunk}) cannot exceed data.chunk_size ({d.chunk_size})")
    if config.batching.oversize == "split" and config.batching.mode != "pack":
        raise UserError(f"{where}: batching.oversize = 'split' needs batching.mode = 'pack'")
    if d.source == "files" and not d.paths and "pretrain" in config.run.stages:
        raise UserError(f"{where}: data.paths: data.source = 'files' needs at least one path for pretraining")
    if len(config.train.betas) != 2 or not all(0 <= b < 1 for b in config.train.betas):
        raise UserError(f"{where}: train.betas: expected two numbers in [0, 1), got {config.train.betas}")
    if config.batching.seq_len_warmup_steps and config.batching.seq_len_warmup_start > config.model.max_seq_len:
        raise UserError(f"{where}: batching.seq_len_warmup_start exceeds model.max_seq_len ({config.model.max_seq_len})")
    validate_posttrain(config, where)
    validate_parallel(config, where)
    validate_fp8(config, where)
    validate_lora(config, where)
    validate_report_to(config, where)
    validate_eval_tasks(config, where)


# `[monitor] report_to` name -> the module it needs
SINK_LIBRARIES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}


def validate_report_to(config: Config, where: str) -> None:
    """`[monitor] report_to`: known tracker names whose library is installed (checked without importing it)."""
    for name in config.monitor.report_to:
        if name not in SINK_LIBRARIES:
            raise UserError(f"{where}: monitor.report_to: unknown tracker {name!r} (known: {', '.join(SINK_LIBRARIES)})")
        if importlib.util.find_spec(SINK_LIBRARIES[name]) is None:
            raise UserError(f'{where}: monitor.report_to = ["{name}"] needs {SINK_LIBRARIES[name]}: '
                            f'pip install -e ".[{name}]"')


def validate_eval_tasks(config: Config, where: str) -> None:
    """Stage `eval_tasks` (lm-eval, docs/lm-eval.md): not on the reward model, lm-eval installed, `[eval]
    tasks_include` directories present, one process. Task names are resolved when the run starts."""
    stages = [s for s in STAGES if getattr(config, "train" if s == "pretrain" else s).eval_tasks]
    if not stages:
        return
    key = f"{'train' if stages[0] == 'pretrain' else stages[0]}.eval_tasks"
    if "rm" in stages:
        raise UserError(f"{where}: rm.eval_tasks: the reward model is not a causal LM; lm-eval tasks run on "
                        f"language-model stages only")
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(f'{where}: {key} needs lm-evaluation-harness: pip install -e ".[lm-eval]"')
    for d in config.eval.tasks_include:
        if not Path(d).expanduser().is_dir():
            raise UserError(f"{where}: eval.tasks_include: no such directory: {d}")
    if config.parallel.mode in DISTRIBUTED_MODES:
        raise UserError(f"{where}: {key}: lm-eval tasks run in one process, not under parallel.mode = "
                        f"'{config.parallel.mode}': run `dswb eval RUN:stage --tasks ...` after training")


def validate_fp8(config: Config, where: str) -> None:
    """`[fp8]` combinations that cannot work."""
    f = config.fp8
    grans = (f.activations, f.weights, f.gradients)
    if f.scaling == "delayed" and set(grans) != {"tensor"}:
        raise UserError(f"{where}: fp8.scaling = 'delayed' keeps one amax history per tensor: set fp8.activations, "
                        f"fp8.weights and fp8.gradients to 'tensor' (got {', '.join(grans)})")
    if f.backend == "torchao":
        if len(set(grans)) != 1 or grans[0] not in ("tensor", "row"):
            raise UserError(f"{where}: fp8.backend = 'torchao' runs per-tensor or per-row scaling only: set "
                            f"fp8.activations, fp8.weights and fp8.gradients all to 'tensor' or all to 'row' "
                            f"(got {', '.join(grans)})")
        if f.e5m2_gradients or f.scaling == "delayed":
            raise UserError(f"{where}: fp8.backend = 'torchao' uses its recipe's formats and current scaling: "
                            f"set fp8.e5m2_gradients = false and fp8.scaling = 'current'")
    if f.stats_every and f.shadow_every and f.shadow_every % f.stats_every:
        raise UserError(f"{where}: fp8.shadow_every ({f.shadow_every}) must be a multiple of "
                        f"fp8.stats_every ({f.stats_every})")
    if any(not pattern.strip() for pattern in f.skip):
        raise UserError(f"{where}: fp8.skip: empty pattern")


def load_config(path: Path | str | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a preset file (or the defaults when `path` is None), apply overrides, validate."""
    config = Config()
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{path}: no such preset file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: invalid TOML: {exc}") from None
        apply_mapping(config, data, where)
    apply_overrides(config, parse_overrides(list(overrides)))
    validate(config, where)
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_toml(config: Config) -> str:
    """The fully resolved config as TOML (round-trips through `load_config`)."""
    lines = []
    for sec in fields(Config):
        section = getattr(config, sec.name)
        assert is_dataclass(section)
        lines.append(f"[{sec.name}]")
        for f in fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        lines.append("")
    return "\n".join(lines)


def config_to_dict(config: Config) -> dict:
    return {sec.name: {f.name: getattr(getattr(config, sec.name), f.name)
                       for f in fields(getattr(config, sec.name))} for sec in fields(Config)}
