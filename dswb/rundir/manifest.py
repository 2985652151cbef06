"""Manifests: the size and checksum of every file of a checkpoint or final model directory.

Standard library only, so `dswb runs verify` checks a run without importing torch. The engine
writes `dswb_manifest.json` last, inside the temporary directory, before the atomic rename; it
lists every file below the directory (whatever a stage saved: weights, optimizer, sidecars), so
a directory that verifies holds exactly the bytes that were written. Checksums are BLAKE2b
(256-bit, `hashlib`), fast enough to read a checkpoint back at disk speed.

    {"format": 1, "hash": "blake2b-256", "files": {"model.safetensors": {"size": 123, "hash": "..."}}}

Directories written before manifests existed verify as `unverified` (loadable, with a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "dswb_manifest.json"
FORMAT = 1
HASH = "blake2b-256"
QUARANTINE_PREFIX = "corrupt-"   # a directory that failed verification, moved aside for inspection


def file_hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=32)).hexdigest()


def listed_files(directory: Path) -> list[str]:
    """Every regular file below `directory` (relative POSIX paths, sorted), except the manifest."""
    out = []
    for root, _dirs, names in os.walk(directory):
        for name in names:
            rel = Path(root, name).relative_to(directory).as_posix()
            if rel != MANIFEST and Path(root, name).is_file():
                out.append(rel)
    return sorted(out)


def build_manifest(directory: Path) -> dict:
    files = {}
    for rel in listed_files(directory):
        path = directory / rel
        files[rel] = {"size": path.stat().st_size, "hash": file_hash(path)}
    return {"format": FORMAT, "hash": HASH, "files": files}


def write_manifest(directory: Path) -> dict:
    """Hash every file of `directory` and write the manifest there (fsynced); returns it."""
    manifest = build_manifest(directory)
    path = directory / MANIFEST
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return manifest


@dataclass
class Verification:
    """`status`: `ok`, `unverified` (no manifest) or `mismatch` (with one problem per file)."""

    path: Path
    status: str
    problems: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status != "mismatch"

    def summary(self) -> str:
        if self.status == "ok":
            return f"ok ({self.files} files)"
        if self.status == "unverified":
            return "unverified (no manifest: written before manifests existed)"
        return "MISMATCH: " + "; ".join(self.problems)


def read_manifest(directory: Path) -> dict | None:
    """The manifest, None if there is none; raises ValueError if it is unreadable."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{MANIFEST} unreadable ({type(exc).__name__})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("hash"), str)
            for v in files.values()):
        raise ValueError(f"{MANIFEST} malformed")
    return manifest


def verify_dir(directory: Path) -> Verification:
    """Compare every file of `directory` with its manifest (sizes first, then checksums)."""
    try:
        manifest = read_manifest(directory)
    except ValueError as exc:
        return Verification(directory, "mismatch", [str(exc)])
    if manifest is None:
        return Verification(directory, "unverified")
    files = manifest["files"]
    problems = []
    for rel, entry in sorted(files.items()):
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        try:
            size = path.stat().st_size
            if size != entry["size"]:
                problems.append(f"{rel}: size {size} bytes, manifest says {entry['size']}")
            elif file_hash(path) != entry["hash"]:
                problems.append(f"{rel}: checksum mismatch")
        except OSError as exc:   # a disk that fails to read is as bad as one that returns wrong bytes
            problems.append(f"{rel}: unreadable ({exc.strerror or type(exc).__name__})")
    for rel in sorted(set(listed_files(directory)) - set(files)):
        problems.append(f"{rel}: not in the manifest (added after the directory was written)")
    return Verification(directory, "mismatch" if problems else "ok", problems, len(files),
                        sum(e["size"] for e in files.values()))


def directory_bytes(directory: Path) -> int:
    """Total size of a directory: from its manifest when it has one, else by walking it."""
    try:
        manifest = read_manifest(directory)
    except ValueError:
        manifest = None
    if manifest is not None:
        return sum(e["size"] for e in manifest["files"].values())
    return sum((directory / rel).stat().st_size for rel in listed_files(directory))


def run_artifacts(run_root: Path) -> tuple[list[Path], list[Path]]:
    """(directories to verify, directories set aside) of a run: `checkpoints/<stage>/step-<N>` and
    `final/<stage>`; set aside are quarantined (`corrupt-*`) and interrupted (`.tmp-*`) writes."""
    check, aside = [], []
    for parent in sorted((run_root / "checkpoints").glob("*")) + [run_root / "final"]:
        if not parent.is_dir():
            continue
        is_final = parent == run_root / "final"
        for d in sorted(parent.iterdir(), key=lambda p: (len(p.name), p.name)):
            if not d.is_dir():
                continue
            if d.name.startswith(QUARANTINE_PREFIX) or d.name.startswith(".tmp-"):
                aside.append(d)
            elif is_final or (d.name.startswith("step-") and d.name[5:].isdigit()):
                check.append(d)
    return check, aside


def verify_run(run_root: Path) -> list[Verification]:
    return [verify_dir(d) for d in run_artifacts(run_root)[0]]
