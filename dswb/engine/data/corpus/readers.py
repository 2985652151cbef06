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
with the position just after it, so an interrupted preparation resumes by `iter_blocks(start=)`.
`parse_block` turns a block into documents; it runs in worker processes (stdlib + pyarrow-free).
`read_documents` reads everything into memory (small data and tests).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from dswb.errors import UserError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".json")
TABLE_SUFFIXES = (".parquet", ".arrow")
COMPRESSED = (".gz", ".zst", ".zstd")
MAX_SKIPPED_EXAMPLES = 5
BLOCK_BYTES = 1 << 20
FORMATS = ("auto", "text", "jsonl", "parquet")


def _plain_name(path: Path) -> str:
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
    name = _plain_name(path)
    if name.endswith(".arrow"):
        return "arrow"
    if fmt != "auto":
        return fmt
    if name.endswith(".parquet"):
        return "parquet"
    return "jsonl" if name.endswith(JSONL_SUFFIXES) else "text"


def _wanted(name: str) -> bool:
    plain = _plain_name(Path(name))
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


def missing_package(module: str, extra: str, what: str) -> UserError:
    return UserError(f"reading {what} needs the '{module}' package: pip install 'dswb[{extra}]' (or pip install {module})")


# -- blocks ----------------------------------------------------------------------------------

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


def iter_blocks(files: list[Path], fmt: str = "auto", text_field: str = "text", block_bytes: int = BLOCK_BYTES,
                start: dict | None = None) -> Iterator[Block]:
    """Blocks of records of every file from `start` (default: the beginning), in order."""
    start = start or start_position()
    for index in range(start["file"], len(files)):
        path = files[index]
        at = start if index == start["file"] else {"file": index, "offset": 0, "line": 1}
        kind = file_format(path, fmt)
        if kind == "text":
            data = _read_whole(path)
            yield Block(str(path), "text", data, 1, {"file": index + 1, "offset": 0, "line": 1}, _size(path))
        elif kind == "jsonl" and _plain_name(path).endswith(".json") and _starts_array(path):
            yield from _json_array_blocks(path, index, at, _read_whole(path), block_bytes)
        elif kind == "jsonl":
            yield from _jsonl_blocks(path, index, at, block_bytes)
        elif kind == "parquet":
            yield from _table_blocks(path, index, at, block_bytes, text_field, _parquet_batches)
        else:
            yield from _table_blocks(path, index, at, block_bytes, text_field, _arrow_batches)


def _starts_array(path: Path) -> bool:
    stream, raw = _open_binary(path)
    try:
        head = _read(stream, 4096, path).lstrip()
    finally:
        stream.close()
        raw.close()
    return head.lstrip(b"\xef\xbb\xbf").lstrip()[:1] == b"["


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _open_binary(path: Path) -> tuple[io.BufferedIOBase, io.BufferedIOBase]:
    """(decompressed byte stream, underlying file) of `path`."""
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    kind = compression(path)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw), raw  # type: ignore[return-value]
    if kind == "zstd":
        try:
            import zstandard
        except ImportError:
            raw.close()
            raise missing_package("zstandard", "zstd", f"{path} (zstd)") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw)), raw
    return raw, raw  # type: ignore[return-value]


def _read_whole(path: Path) -> bytes:
    stream, raw = _open_binary(path)
    try:
        return stream.read()
    except (OSError, EOFError, ValueError) as exc:
        raise UserError(f"{path}: cannot read (damaged or truncated file?): {exc}") from None
    finally:
        stream.close()
        raw.close()


def _read(stream, n: int, path: Path) -> bytes:
    try:
        return stream.read(n)
    except (OSError, EOFError, ValueError) as exc:
        raise UserError(f"{path}: cannot read (damaged or truncated file?): {exc}") from None


def _jsonl_blocks(path: Path, index: int, at: dict, block_bytes: int) -> Iterator[Block]:
    compressed = compression(path) is not None
    line = at["line"]
    stream, raw = _open_binary(path)
    try:
        offset, tail = 0, b""
        if at["offset"] and not compressed:
            stream.seek(at["offset"])
            offset = at["offset"]
        elif line > 1 and compressed:  # no seeking in a compressed stream: skip whole lines
            tail = _skip_lines(stream, line - 1, path)
        last_raw = raw.tell()
        while True:
            chunk = _read(stream, block_bytes, path)
            if not chunk:
                if tail:
                    yield Block(str(path), "lines", tail, line, {"file": index + 1, "offset": 0, "line": 1},
                                max(0, raw.tell() - last_raw))
                return
            data = tail + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                tail = data
                continue
            body, tail = data[:cut + 1], data[cut + 1:]
            offset += len(body)
            n_lines = body.count(b"\n")
            end = {"file": index, "offset": 0 if compressed else offset, "line": line + n_lines}
            now = raw.tell()
            yield Block(str(path), "lines", body, line, end, max(0, now - last_raw))
            line, last_raw = line + n_lines, now
    finally:
        stream.close()
        raw.close()


def _skip_lines(stream, n: int, path: Path) -> bytes:
    """Read past `n` lines; returns the bytes read beyond them."""
    while True:
        chunk = _read(stream, BLOCK_BYTES, path)
        if not chunk:
            raise UserError(f"{path}: file changed since the preparation was interrupted (too few lines)")
        count = chunk.count(b"\n")
        if count < n:
            n -= count
            continue
        cut = -1
        for _ in range(n):
            cut = chunk.index(b"\n", cut + 1)
        return chunk[cut + 1:]


def _json_array_blocks(path: Path, index: int, at: dict, data: bytes, block_bytes: int) -> Iterator[Block]:
    try:
        items = json.loads(_decode(data, str(path)))
    except ValueError as exc:
        raise UserError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a JSON array")
    step = max(1, int(len(items) * block_bytes / max(1, len(data))))
    for lo in range(at["offset"], len(items), step):
        hi = min(lo + step, len(items))
        end = {"file": index + 1, "offset": 0, "line": 1} if hi == len(items) else {"file": index, "offset": hi, "line": 1}
        yield Block(str(path), "items", items[lo:hi], lo + 1, end, int(len(data) * (hi - lo) / max(1, len(items))))


def _parquet_batches(path: Path, text_field: str) -> tuple[Iterator, int]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise missing_package("pyarrow", "parquet", f"{path} (Parquet)") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise UserError(f"{path}: not a readable Parquet file: {_first_line(exc)}") from None
    _check_column(path, pf.schema_arrow, text_field)
    return pf.iter_batches(batch_size=1024, columns=[text_field]), pf.metadata.num_rows


def _arrow_batches(path: Path, text_field: str) -> tuple[Iterator, int]:
    try:
        import pyarrow as pa
        import pyarrow.ipc as ipc
    except ImportError:
        raise missing_package("pyarrow", "parquet", f"{path} (Arrow)") from None
    try:
        source = pa.memory_map(str(path))
        try:
            reader = ipc.open_stream(source)
            batches = iter(reader)
        except pa.ArrowInvalid:
            file_reader = ipc.open_file(pa.memory_map(str(path)))
            reader = file_reader
            batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
    except Exception as exc:
        raise UserError(f"{path}: not a readable Arrow file: {_first_line(exc)}") from None
    _check_column(path, reader.schema, text_field)
    return batches, -1


def _check_column(path: Path, schema, text_field: str) -> None:
    if text_field not in schema.names:
        raise UserError(f"{path}: no column '{text_field}' (columns: {', '.join(schema.names)}); set data.text_field")
    kind = str(schema.field(text_field).type)
    if kind not in ("string", "large_string", "string_view"):
        raise UserError(f"{path}: column '{text_field}' is {kind}, not a string")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _table_blocks(path: Path, index: int, at: dict, block_bytes: int, text_field: str, open_batches) -> Iterator[Block]:
    batches, total_rows = open_batches(path, text_field)
    size = _size(path)
    skip, row = at["offset"], 0
    values: list = []
    nbytes, first = 0, at["offset"] + 1
    for batch in batches:
        column = batch.column(batch.schema.get_field_index(text_field))
        n = len(column)
        if row + n <= skip:
            row += n
            continue
        if row < skip:
            column, row = column.slice(skip - row), skip
        values.extend(column.to_pylist())
        nbytes += column.nbytes
        row += len(column)
        if nbytes >= block_bytes:
            share = int(size * len(values) / total_rows) if total_rows > 0 else int(nbytes)
            yield Block(str(path), "values", values, first, {"file": index, "offset": row, "line": 1}, share)
            values, nbytes, first = [], 0, row + 1
    share = int(size * len(values) / total_rows) if total_rows > 0 else int(nbytes)
    yield Block(str(path), "values", values, first, {"file": index + 1, "offset": 0, "line": 1}, share)


# -- records ---------------------------------------------------------------------------------

@dataclass
class Parsed:
    """What a block held: non-blank documents, and the records that were bad."""

    texts: list[str] = field(default_factory=list)
    records: int = 0
    empty: int = 0
    bad: list[str] = field(default_factory=list)   # messages, in order
    fatal: str | None = None                       # an error that `bad_lines="skip"` does not cover


def _decode(data: bytes, path: str, line: int | None = None) -> str:
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
            _keep(out, _decode(block.data, path).replace("\r\n", "\n"))
        except UserError as exc:
            out.fatal = exc.message
        return out
    if block.kind == "lines":
        for number, raw in enumerate(block.data.split(b"\n"), start=block.first):
            if not raw.strip():
                continue
            try:
                _keep(out, _text_of(json.loads(_decode(raw, path, number)), text_field))
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
