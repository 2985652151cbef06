"""What the launch form needs, without Textual: presets, override parsing, validation.

Validation is `dswb.config.load_config`, the same check `dswb run` does, so an error shows
inline in the form before anything starts. Standard library only (plus dswb's config code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dswb.config import load_config
from dswb.config.schema import Config
from dswb.errors import UserError

ALL_STAGES = "all"
DEFAULT_PRESET = "smoke"


@dataclass(frozen=True)
class PresetChoice:
    name: str
    path: Path
    summary: str = ""
    command: str = ""


def available_presets() -> list[PresetChoice]:
    """Presets from `dswb.presets` (./presets first, then the repo's)."""
    from dswb.presets import list_presets

    return [PresetChoice(p.name, Path(p.path), p.summary, p.command) for p in list_presets()]


def default_preset(choices: list[PresetChoice]) -> PresetChoice | None:
    """The smoke preset if there is one (fast, safe to try), else the first."""
    for choice in choices:
        if choice.name == DEFAULT_PRESET:
            return choice
    return choices[0] if choices else None


def override_lines(text: str) -> list[str]:
    """`SECTION.KEY=VALUE` items, one per line; blank lines and `#` comments are ignored."""
    items = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith("#") else ""
        if line:
            items.append(line)
    return items


def build_overrides(text: str, stage: str = ALL_STAGES, run_name: str = "") -> list[str]:
    """The `--set` items the form stands for: typed overrides, the stage choice, the name."""
    items = override_lines(text)
    if stage and stage != ALL_STAGES:
        items.append(f"run.stages={json.dumps([stage])}")
    if run_name.strip():
        items.append(f"run.name={json.dumps(run_name.strip())}")
    return items


def validate(preset: Path | None, overrides: list[str]) -> Config:
    """The resolved config, or a `UserError` with one line naming the key."""
    return load_config(preset, overrides)


def describe(config: Config) -> str:
    """One line about what would run, shown under a valid form."""
    stages = ", ".join(config.run.stages)
    model = config.model.path or f"{config.model.size} model"
    return (f"{stages}: {model}, {config.train.steps:,} steps, lr {config.train.lr:g}, "
            f"batching {config.batching.mode} ({config.batching.max_tokens:,} tokens), device {config.run.device}")


def check(preset: Path | None, overrides: list[str]) -> tuple[bool, str]:
    """(ok, message) for the form's status line."""
    try:
        return True, describe(validate(preset, overrides))
    except UserError as exc:
        return False, str(exc)
