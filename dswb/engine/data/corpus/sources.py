"""Which files an input names, and what format each one is (see readers.py for the rules).

`expand_paths` turns `data.paths` (files, directories, globs) into files in a deterministic order:
directories are walked recursively for the known extensions (hidden entries skipped), in sorted
order; a glob's matches are sorted too; a Hugging Face `datasets` directory
(`Dataset.save_to_disk`) counts as one entry, its Arrow files (`hf_dataset_files`).
`file_format` picks the reader of one file (`text`, `jsonl`, `parquet` or `arrow`) and
`compression` its decompressor (`gzip`, `zstd` or none), both from the extension.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Iterator

from dswb.errors import UserError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".json")
TABLE_SUFFIXES = (".parquet", ".arrow")
COMPRESSED = (".gz", ".zst", ".zstd")
FORMATS = ("auto", "text", "jsonl", "parquet")


def plain_name(path: Path) -> str:
    """The lower-case file name without its compression suffix."""
    name = path.name.lower()
    for suffix in COMPRESSED:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def compression(path: Path) -> str | None:
    name = path.name.lower()
    return "gzip" if name.endswith(".gz") else "zstd" if name.endswith(COMPRESSED[1:]) else None


def file_format(path: Path, fmt: str) -> str:
    """`text`, `jsonl`, `parquet` or `arrow` for one file: forced by `fmt`, else by extension
    (compression suffixes aside; unknown: text)."""
    if fmt not in FORMATS:
        raise UserError(f"data.format: unknown format '{fmt}' ({', '.join(FORMATS)})")
    name = plain_name(path)
    if name.endswith(".arrow"):
        return "arrow"
    if fmt != "auto":
        return fmt
    if name.endswith(".parquet"):
        return "parquet"
    return "jsonl" if name.endswith(JSONL_SUFFIXES) else "text"


def file_size(path: Path) -> int:
    """Size of `path` in bytes, 0 when it cannot be read (progress only)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def missing_package(module: str, extra: str, what: str) -> UserError:
    return UserError(f"reading {what} needs the '{module}' package: pip install 'dswb[{extra}]' (or pip install {module})")


def _wanted(name: str) -> bool:
    plain = plain_name(Path(name))
    return not name.startswith(".") and plain.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES + TABLE_SUFFIXES)


def hf_dataset_files(directory: Path) -> list[Path] | None:
    """The Arrow files of a `datasets` `save_to_disk` directory, or None if it is not one."""
    if (directory / "dataset_dict.json").is_file():
        try:
            splits = json.loads((directory / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{directory}: unreadable dataset_dict.json") from None
        chosen = ["train"] if "train" in splits else list(splits)
        return [f for split in chosen for f in (hf_dataset_files(directory / split) or [])]
    if not (directory / "state.json").is_file() or not (directory / "dataset_info.json").is_file():
        return None
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
        return [directory / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{directory}: unreadable state.json of a saved `datasets` directory") from None


def expand_paths(paths: list[str]) -> list[Path]:
    """Files named by `paths` (files as given, directories walked, globs matched), in order."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(_walk(path))
        elif any(c in raw for c in "*?["):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise UserError(f"data.paths: no file matches {raw}")
            for match in map(Path, matches):
                files.extend(_walk(match) if match.is_dir() else [match] if _wanted(match.name) else [])
        else:
            raise UserError(f"data.paths: no such file or directory: {raw}")
    return files


def _walk(root: Path) -> Iterator[Path]:
    """Files under `root` in sorted order; a `datasets` directory counts as one entry (its files)."""
    dataset = hf_dataset_files(root)
    if dataset is not None:
        yield from dataset
        return
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        entries, subdirs = [], []
        for d in sorted(x for x in dirnames if not x.startswith(".")):
            files = hf_dataset_files(here / d)
            if files is None:
                subdirs.append(d)
            else:
                entries.append((d, files))
        dirnames[:] = subdirs
        entries += [(name, [here / name]) for name in filenames if _wanted(name)]
        for _, files in sorted(entries, key=lambda e: e[0]):
            yield from files
