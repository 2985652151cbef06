"""Finding presets: TOML run configs in `./presets` (the working directory) and in the repo.

A preset opens with a comment block: one line gives the command that runs it
(`# dswb run presets/smoke.toml`), the other lines say what it is for. Presets in the working
directory shadow repo presets of the same name. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dswb
from dswb.errors import UserError

SUFFIX = ".toml"


@dataclass(frozen=True)
class PresetInfo:
    """One preset file: its name (file stem), path, summary and the command that runs it."""

    name: str
    path: Path
    summary: str
    command: str


def preset_dirs() -> list[Path]:
    """Existing preset directories, searched in order: `./presets`, then the repo's `presets/`."""
    candidates = [Path.cwd() / "presets", Path(dswb.__file__).resolve().parent.parent / "presets"]
    dirs: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir() and all(candidate.resolve() != d.resolve() for d in dirs):
            dirs.append(candidate)
    return dirs


def read_header(text: str) -> tuple[str, str]:
    """`(summary, command)` from a preset's leading comment lines.

    The command is the first comment line containing `dswb ` (a leading `$ `, `Run:` or
    backticks are dropped); the summary is the other comment lines joined with spaces.
    """
    command, summary = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            if summary or command:
                break
            continue
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        at = _command_start(body)
        if not command and at >= 0:
            command = body[at:].strip().strip("`").strip()
        elif body:
            summary.append(body)
    return " ".join(summary), command


def _command_start(body: str) -> int:
    for i in range(len(body)):
        if body.startswith("dswb ", i) and (i == 0 or body[i - 1] in " `:$"):
            return i
    return -1


def preset_info(path: Path) -> PresetInfo:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    summary, command = read_header(text)
    return PresetInfo(path.stem, path, summary, command)


def list_presets() -> list[PresetInfo]:
    """Every preset, sorted by name; a name in an earlier directory hides later ones."""
    found: dict[str, PresetInfo] = {}
    for directory in preset_dirs():
        for path in sorted(directory.glob(f"*{SUFFIX}")):
            if path.is_file() and path.stem not in found:
                found[path.stem] = preset_info(path)
    return [found[name] for name in sorted(found)]


def find_preset(name_or_path: str) -> Path:
    """A preset file given as a path or a name (`smoke` or `smoke.toml`)."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        raise UserError(f"{name_or_path}: is a directory, not a preset file")
    looks_like_path = "/" in name_or_path or "\\" in name_or_path
    if not looks_like_path:
        name = name_or_path[: -len(SUFFIX)] if name_or_path.endswith(SUFFIX) else name_or_path
        for directory in preset_dirs():
            path = directory / f"{name}{SUFFIX}"
            if path.is_file():
                return path
    available = ", ".join(p.name for p in list_presets()) or "none found"
    what = "no such preset file" if looks_like_path else "unknown preset"
    raise UserError(f"{what} '{name_or_path}' (available: {available})")
