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
FROM = "from:"  # a stage picker value: this stage and every later one
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


def stage_choices(stages: list[str]) -> list[tuple[str, str]]:
    """The stage picker's (label, value) options for a preset's stages: all of them, each alone,
    and for a pipeline each stage onward (`from:NAME`), e.g. to rerun RL after changing it."""
    options = [(f"all stages ({', '.join(stages)})" if stages else "all stages", ALL_STAGES)]
    if len(stages) > 1:
        options += [(f"{s} only", s) for s in stages]
        options += [(" → ".join(stages[i:]), f"{FROM}{stages[i]}") for i in range(1, len(stages) - 1)]
    return options


def selected_stages(choice: str, stages: list[str]) -> list[str] | None:
    """The stages a picker value stands for (None: the preset's own)."""
    if not choice or choice == ALL_STAGES:
        return None
    if choice.startswith(FROM):
        name = choice[len(FROM):]
        return stages[stages.index(name):] if name in stages else [name]
    return [choice]


def build_overrides(text: str, stage: str = ALL_STAGES, run_name: str = "", stages: list[str] | None = None
                    ) -> list[str]:
    """The `--set` items the form stands for: typed overrides, the stage choice, the name."""
    items = override_lines(text)
    chosen = selected_stages(stage, list(stages or []))
    if chosen:
        items.append(f"run.stages={json.dumps(chosen)}")
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
