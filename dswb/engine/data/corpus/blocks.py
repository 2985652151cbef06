"""Blocks, the unit of reading: a run of records of one file, and the documents they hold.

A `Block` (made by readers.iter_blocks) holds about `block_bytes` of whole records (JSONL lines,
a whole text file, JSON array items, a Parquet/Arrow column's values) and the position just after
it, so an interrupted preparation resumes by `iter_blocks(start=block.end)`. `parse_block`
turns a block into documents, bad records into `FILE:LINE` messages (`FILE: row N`, `FILE: item N`);
it runs in worker processes, so this module needs the standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dswb.errors import UserError

BLOCK_BYTES = 1 << 20


@dataclass
class Block:
    """A run of records from one file, with the position where reading continues after it."""

    path: str
    kind: str                 # "lines" (JSONL bytes), "text" (a whole file), "values" (a column), "items" (JSON array)
    data: Any
    first: int                # number (line, row or item, 1-based) of the first record
    end: dict                 # {"file", "offset", "line"}: where `iter_blocks(start=)` resumes
    in_bytes: int = 0         # input bytes this block stands for (progress)


def start_position() -> dict:
    return {"file": 0, "offset": 0, "line": 1}


@dataclass
class Parsed:
    """What a block held: non-blank documents, and the records that were bad."""

    texts: list[str] = field(default_factory=list)
    records: int = 0
    empty: int = 0
    bad: list[str] = field(default_factory=list)   # messages, in order
    fatal: str | None = None                       # an error that `bad_lines="skip"` does not cover


def decode(data: bytes, path: str, line: int | None = None) -> str:
    """UTF-8 text of `data` (a BOM dropped at the start of a file); a `UserError` naming the line."""
    try:
        return data.decode("utf-8-sig" if line in (None, 1) else "utf-8")
    except UnicodeDecodeError as exc:
        if line is None:
            line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None


def _text_of(obj: object, text_field: str) -> str:
    if not isinstance(obj, dict):
        raise UserError(f"expected a JSON object, got {type(obj).__name__}")
    if text_field not in obj:
        raise UserError(f"missing field '{text_field}'")
    text = obj[text_field]
    if not isinstance(text, str):
        raise UserError(f"field '{text_field}' is {type(text).__name__}, not a string")
    return text


def _keep(out: Parsed, text: str) -> None:
    out.records += 1
    if text.strip():
        out.texts.append(text)
    else:
        out.empty += 1


def parse_block(block: Block, text_field: str, stop_at_bad: bool = False) -> Parsed:
    """The documents of a block; bad records become messages (the first one ends the block when
    `stop_at_bad`, i.e. with `bad_lines="error"`)."""
    out = Parsed()
    path = block.path
    if block.kind == "text":
        try:
            _keep(out, decode(block.data, path).replace("\r\n", "\n"))
        except UserError as exc:
            out.fatal = exc.message
        return out
    if block.kind == "lines":
        for number, raw in enumerate(block.data.split(b"\n"), start=block.first):
            if not raw.strip():
                continue
            try:
                _keep(out, _text_of(json.loads(decode(raw, path, number)), text_field))
            except (UserError, ValueError) as exc:
                message = exc.message if isinstance(exc, UserError) else f"{path}:{number}: invalid JSON: {exc}"
                if not message.startswith(f"{path}:"):
                    message = f"{path}:{number}: {message}"
                out.records += 1
                out.bad.append(message)
                if stop_at_bad:
                    return out
    elif block.kind == "items":
        for number, item in enumerate(block.data, start=block.first):
            try:
                _keep(out, _text_of(item, text_field))
            except UserError as exc:
                out.records += 1
                out.bad.append(f"{path}: item {number}: {exc.message}")
                if stop_at_bad:
                    return out
    else:  # values of a Parquet / Arrow column
        for number, value in enumerate(block.data, start=block.first):
            if isinstance(value, str):
                _keep(out, value)
                continue
            out.records += 1
            what = "null" if value is None else f"{type(value).__name__}, not a string"
            out.bad.append(f"{path}: row {number}: field '{text_field}' is {what}")
            if stop_at_bad:
                return out
    return out
