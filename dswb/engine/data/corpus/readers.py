"""Read raw documents from the files people have, as a stream of blocks that can resume.

Inputs (`data.paths`: files, directories, globs such as `data/*.jsonl.gz`):
- `.txt` (also `.text`, `.md`): ONE document, the whole text (`\\r\\n` becomes `\\n`). Long
  documents are split later, on token ids, by `chunking.chunk_tokens`.
- `.jsonl` (or `.json`): one JSON object per line whose `text_field` is the document; blank lines
  are ignored. A `.json` file whose first character is `[` is one JSON array of such objects
  (read whole: use JSONL for large data); its "line" in messages is the item number.
- `.jsonl.gz`, `.jsonl.zst` (and `.json.gz` / `.json.zst`, or any of the above compressed):
  decompressed as a stream. zstd needs the `zstandard` package (`pip install 'dswb[zstd]'`).
- `.parquet`: the `text_field` column, read in record batches (`pip install 'dswb[parquet]'`).
- A directory saved by Hugging Face `datasets` (`Dataset.save_to_disk`: `state.json` +
  `*.arrow`; a `DatasetDict` directory uses its `train` split, else every split): its Arrow
  files, read with pyarrow alone (`datasets` itself is not needed).
- Directories are walked recursively for those extensions (hidden entries skipped), in sorted
  order, so the document order is deterministic; a glob's matches are sorted too.
A bad record (bad JSON, not an object, missing, null or non-string field, not UTF-8) is a
`UserError` naming `FILE:LINE` (`FILE: row N` for Parquet/Arrow, `FILE: item N` for a JSON
array) or, with `bad_lines="skip"`, skipped and counted. Whitespace-only documents are dropped;
no documents at all is a `UserError` (empty dataset).

`iter_blocks` cuts the input into `Block`s of about `block_bytes` (whole lines, whole rows), each
with the position just after it, so an interrupted preparation resumes by `iter_blocks(start=)`;
`blocks.parse_block` turns a block into documents (it runs in worker processes: stdlib only).
`read_documents` reads everything into memory (small data and tests).
The parts: sources.py (path expansion, format detection), text_readers.py (text, JSONL and JSON
arrays, plain or compressed), table_readers.py (Parquet, Arrow), blocks.py (blocks and parsing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from dswb.engine.data.corpus.blocks import BLOCK_BYTES, Block, parse_block, start_position
from dswb.engine.data.corpus.sources import expand_paths, file_format, file_size, plain_name
from dswb.engine.data.corpus.table_readers import arrow_batches, parquet_batches, table_blocks
from dswb.engine.data.corpus.text_readers import json_array_blocks, jsonl_blocks, read_whole, starts_array
from dswb.errors import UserError

MAX_SKIPPED_EXAMPLES = 5


def iter_blocks(files: list[Path], fmt: str = "auto", text_field: str = "text", block_bytes: int = BLOCK_BYTES,
                start: dict | None = None) -> Iterator[Block]:
    """Blocks of records of every file from `start` (default: the beginning), in order."""
    start = start or start_position()
    for index in range(start["file"], len(files)):
        path = files[index]
        at = start if index == start["file"] else {"file": index, "offset": 0, "line": 1}
        kind = file_format(path, fmt)
        if kind == "text":
            data = read_whole(path)
            yield Block(str(path), "text", data, 1, {"file": index + 1, "offset": 0, "line": 1}, file_size(path))
        elif kind == "jsonl" and plain_name(path).endswith(".json") and starts_array(path):
            yield from json_array_blocks(path, index, at, read_whole(path), block_bytes)
        elif kind == "jsonl":
            yield from jsonl_blocks(path, index, at, block_bytes)
        elif kind == "parquet":
            yield from table_blocks(path, index, at, block_bytes, text_field, parquet_batches)
        else:
            yield from table_blocks(path, index, at, block_bytes, text_field, arrow_batches)


# -- everything in memory --------------------------------------------------------------------

@dataclass
class ReadResult:
    """Documents read from a set of files, with what was skipped along the way."""

    docs: list[str]
    files: list[str]
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)


def read_documents(paths: list[str], fmt: str = "auto", text_field: str = "text",
                   bad_lines: str = "error") -> ReadResult:
    """Read every document under `paths` into memory (see the module docstring for the rules)."""
    if bad_lines not in ("error", "skip"):
        raise UserError(f"data.bad_lines: unknown policy '{bad_lines}' (error or skip)")
    files = expand_paths(paths)
    result = ReadResult(docs=[], files=[str(f) for f in files])
    for block in iter_blocks(files, fmt, text_field, block_bytes=1 << 30):
        parsed = parse_block(block, text_field, stop_at_bad=bad_lines == "error")
        if parsed.fatal:
            raise UserError(parsed.fatal)
        if parsed.bad and bad_lines == "error":
            raise UserError(parsed.bad[0])
        result.docs.extend(parsed.texts)
        result.skipped += len(parsed.bad)
        room = MAX_SKIPPED_EXAMPLES - len(result.skipped_examples)
        result.skipped_examples.extend(parsed.bad[:max(0, room)])
    if not result.docs:
        raise UserError(no_documents_message(paths, result.skipped))
    return result


def no_documents_message(paths: list[str], skipped: int) -> str:
    where = ", ".join(paths) if paths else "(no paths)"
    note = f" ({skipped} malformed lines skipped)" if skipped else ""
    return f"no documents in {where}{note}"
