"""Paths inside a run directory, creating one (owner-only), and finding runs under a root."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from dswb.errors import UserError

DEFAULT_RUNS_ROOT = "runs"


@dataclass(frozen=True)
class RunPaths:
    """Every well-known path of one run directory."""

    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def control(self) -> Path:
        return self.root / "control.jsonl"

    @property
    def stdout(self) -> Path:
        """Where a detached launch sends the process's own stdout/stderr."""
        return self.root / "process.out"

    def checkpoints(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage

    def final(self, stage: str) -> Path:
        return self.root / "final" / stage

    def exists(self) -> bool:
        return self.status.exists() or self.config.exists()


ADAPTER_CONFIG = "adapter_config.json"     # peft's: a directory holding an adapter (a LoRA stage's final)


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def is_model_dir(path: Path) -> bool:
    """A directory that loads as a model: a transformers model or a peft adapter of one."""
    return (Path(path) / "config.json").is_file() or is_adapter_dir(path)


def new_run_id(name: str, runs_root: Path) -> str:
    """`<YYYYmmdd-HHMMSS>-<name>`, with a numeric suffix if that directory already exists."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    run_id, n = base, 1
    while (runs_root / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def create_run_dir(path: Path) -> RunPaths:
    """Create a run directory readable and writable by its owner only (0700)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return RunPaths(path)


def find_runs(runs_root: Path) -> list[RunPaths]:
    """All run directories directly under `runs_root`, newest first (by directory name)."""
    if not runs_root.is_dir():
        return []
    runs = [RunPaths(p) for p in runs_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted((r for r in runs if r.exists()), key=lambda r: r.run_id, reverse=True)


def resolve_run(ref: str, runs_root: Path) -> RunPaths:
    """A run given as a path, an id under `runs_root`, a unique id prefix/suffix, or `latest`."""
    candidate = Path(ref)
    if candidate.is_dir() and RunPaths(candidate).exists():
        return RunPaths(candidate)
    runs = find_runs(runs_root)
    if ref == "latest" and runs:
        return runs[0]
    exact = [r for r in runs if r.run_id == ref]
    if exact:
        return exact[0]
    partial = [r for r in runs if ref in r.run_id]
    if len(partial) == 1:
        return partial[0]
    if len(partial) > 1:
        names = ", ".join(r.run_id for r in partial[:5])
        raise UserError(f"run '{ref}' is ambiguous under {runs_root}: {names}")
    raise UserError(f"no run '{ref}' under {runs_root} (try `dswb runs list --runs-root DIR`)")
