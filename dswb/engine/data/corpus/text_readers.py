"""Blocks of the byte-stream formats: `.txt` files, JSONL, JSON arrays, each plain or compressed.

`open_binary` decompresses `.gz` (gzip) and `.zst`/`.zstd` (the `zstandard` package) as a
stream. A text file is one block (`read_whole`); JSONL is cut into blocks of whole lines
(`jsonl_blocks`), resumable at a byte offset (plain files) or by skipping lines (compressed ones:
no seeking in a stream); a JSON array is read whole and cut into runs of items
(`json_array_blocks`). A damaged or truncated file is a `UserError`.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Iterator

from dswb.engine.data.corpus.blocks import BLOCK_BYTES, Block, decode
from dswb.engine.data.corpus.sources import compression, missing_package
from dswb.errors import UserError


def open_binary(path: Path) -> tuple[io.BufferedIOBase, io.BufferedIOBase]:
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


def read_whole(path: Path) -> bytes:
    stream, raw = open_binary(path)
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


def starts_array(path: Path) -> bool:
    """Whether the (decompressed) file starts with `[`, after whitespace and a BOM."""
    stream, raw = open_binary(path)
    try:
        head = _read(stream, 4096, path).lstrip()
    finally:
        stream.close()
        raw.close()
    return head.lstrip(b"\xef\xbb\xbf").lstrip()[:1] == b"["


def jsonl_blocks(path: Path, index: int, at: dict, block_bytes: int) -> Iterator[Block]:
    """Blocks of whole lines of file number `index`, from position `at`."""
    compressed = compression(path) is not None
    line = at["line"]
    stream, raw = open_binary(path)
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


def json_array_blocks(path: Path, index: int, at: dict, data: bytes, block_bytes: int) -> Iterator[Block]:
    """Blocks of items of the JSON array `data` (file number `index`), from item `at["offset"]`."""
    try:
        items = json.loads(decode(data, str(path)))
    except ValueError as exc:
        raise UserError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a JSON array")
    step = max(1, int(len(items) * block_bytes / max(1, len(data))))
    for lo in range(at["offset"], len(items), step):
        hi = min(lo + step, len(items))
        end = {"file": index + 1, "offset": 0, "line": 1} if hi == len(items) else {"file": index, "offset": hi, "line": 1}
        yield Block(str(path), "items", items[lo:hi], lo + 1, end, int(len(data) * (hi - lo) / max(1, len(items))))
