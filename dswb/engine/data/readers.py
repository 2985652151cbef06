"""Read raw documents from plain-text and JSONL files (or directories of them).

Choices a user can rely on:
- A `.txt` (also `.text`, `.md`) file is ONE document: its whole text. Long documents are split
  later, on token ids, by `chunking.chunk_tokens`, so nothing here depends on the tokenizer.
- A `.jsonl` (or `.json`) file holds one JSON object per line whose `text_field` is the document.
  Blank lines are ignored. A `.json` file whose first character is `[` is read as one JSON array
  of such objects (its "line" in messages is the item number).
- Directories are walked recursively for those extensions (hidden entries skipped), in sorted
  order, so the document order is deterministic.
- A malformed line (bad JSON, not an object, missing or non-string field, not UTF-8) is a
  `UserError` naming `FILE:LINE`, or, with `bad_lines="skip"`, skipped and counted.
- Empty documents are dropped; no documents at all is a `UserError` (empty dataset).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from dswb.errors import UserError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".json")
MAX_SKIPPED_EXAMPLES = 5


@dataclass
class ReadResult:
    """Documents read from a set of files, with what was skipped along the way."""

    docs: list[str]
    files: list[str]
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)


def expand_paths(paths: list[str]) -> list[Path]:
    """Files named by `paths` (files as given, directories walked), sorted within each directory."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(_walk(path))
        else:
            raise UserError(f"data.paths: no such file or directory: {raw}")
    return files


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(TEXT_SUFFIXES + JSONL_SUFFIXES):
                yield Path(dirpath) / name


def file_format(path: Path, fmt: str) -> str:
    """`text` or `jsonl` for one file: forced by `fmt`, else by extension (unknown: text)."""
    if fmt in ("text", "jsonl"):
        return fmt
    if fmt != "auto":
        raise UserError(f"data.format: unknown format '{fmt}' (auto, text or jsonl)")
    return "jsonl" if path.name.lower().endswith(JSONL_SUFFIXES) else "text"


def read_documents(paths: list[str], fmt: str = "auto", text_field: str = "text",
                   bad_lines: str = "error") -> ReadResult:
    """Read every document under `paths`; see the module docstring for the rules."""
    if bad_lines not in ("error", "skip"):
        raise UserError(f"data.bad_lines: unknown policy '{bad_lines}' (error or skip)")
    files = expand_paths(paths)
    result = ReadResult(docs=[], files=[str(f) for f in files])
    for path in files:
        if file_format(path, fmt) == "text":
            text = _read_text(path)
            if text.strip():
                result.docs.append(text)
        else:
            for text in _read_jsonl(path, text_field, bad_lines, result):
                if text.strip():
                    result.docs.append(text)
    if not result.docs:
        where = ", ".join(paths) if paths else "(no paths)"
        note = f" ({result.skipped} malformed lines skipped)" if result.skipped else ""
        raise UserError(f"no documents in {where}{note}")
    return result


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _decode(data: bytes, path: Path, line: int | None = None) -> str:
    try:
        return data.decode("utf-8-sig" if line in (None, 1) else "utf-8")
    except UnicodeDecodeError as exc:
        if line is None:
            line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None


def _read_text(path: Path) -> str:
    return _decode(_read_bytes(path), path).replace("\r\n", "\n")


def _read_jsonl(path: Path, text_field: str, bad_lines: str, result: ReadResult) -> Iterator[str]:
    data = _read_bytes(path)
    if path.name.lower().endswith(".json") and data.lstrip()[:1] == b"[":
        yield from _read_json_array(path, data, text_field, bad_lines, result)
        return
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = _decode(raw, path, number)
            yield _text_of(json.loads(line), text_field)
        except (UserError, ValueError) as exc:
            message = exc.message if isinstance(exc, UserError) else f"{path}:{number}: invalid JSON: {exc}"
            if not message.startswith(f"{path}:"):
                message = f"{path}:{number}: {message}"
            _bad(message, bad_lines, result)


def _read_json_array(path: Path, data: bytes, text_field: str, bad_lines: str,
                     result: ReadResult) -> Iterator[str]:
    try:
        items = json.loads(_decode(data, path))
    except ValueError as exc:
        raise UserError(f"{path}: invalid JSON: {exc}") from None
    for number, item in enumerate(items, start=1):
        try:
            yield _text_of(item, text_field)
        except UserError as exc:
            _bad(f"{path}: item {number}: {exc.message}", bad_lines, result)


def _text_of(obj: object, text_field: str) -> str:
    if not isinstance(obj, dict):
        raise UserError(f"expected a JSON object, got {type(obj).__name__}")
    if text_field not in obj:
        raise UserError(f"missing field '{text_field}'")
    text = obj[text_field]
    if not isinstance(text, str):
        raise UserError(f"field '{text_field}' is {type(text).__name__}, not a string")
    return text


def _bad(message: str, bad_lines: str, result: ReadResult) -> None:
    if bad_lines == "error":
        raise UserError(message)
    result.skipped += 1
    if len(result.skipped_examples) < MAX_SKIPPED_EXAMPLES:
        result.skipped_examples.append(message)
