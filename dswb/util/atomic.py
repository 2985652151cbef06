"""Durable and atomic file writes: fsync helpers, and commits through a temporary file.

`write_atomic`, `write_json_atomic` and `atomic_file` write a temporary file in the destination's
directory, optionally fsync it, then `os.replace` it onto the destination: a reader sees the old
file or the new one, never half of either, and a failure (an exception, a full disk) removes the
temporary and leaves the old file as it was. A `kill -9` can still leave the temporary behind,
so its name matters to the code that cleans up: give it with `tmp_name` (e.g. `meta.json.part`),
or get a unique `<prefix>XXXXXXXX.tmp`.

`fsync=True` makes the new content durable before the rename (so after a crash the name never
points at unwritten data); it does not fsync the directory, so the rename itself may still be
lost: call `fsync_dir(path.parent)` after it where that matters. The rename is looked up as
`os.replace` at call time, so a test hook that wraps it (`dswb.bench.faults`) sees it.

Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data (written through any handle, now closed) to stable storage."""
    _fsync(path)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (names created, renamed or removed in it) to stable storage."""
    _fsync(path)


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike, *, dirs: bool = False) -> None:
    """fsync every regular file under the directory `path` (recursively); with `dirs`, then also
    every directory below it and `path` itself (deepest first), so the names are durable too."""
    for root, subdirs, files in os.walk(path, topdown=False):
        for name in sorted(files):
            child = os.path.join(root, name)
            if os.path.isfile(child):
                fsync_file(child)
        if dirs:
            fsync_dir(root)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True, tmp_name: str | None = None,
                prefix: str | None = None, encoding: str | None = None) -> Iterator[IO]:
    """A file to write `path` through: opened on a temporary in the same directory, committed
    with `os.replace` when the block ends normally, removed when it raises.

    `mode` is `wb` or `w` (then `encoding`, default UTF-8). The temporary is named `tmp_name`
    when given, else `<prefix>XXXXXXXX.tmp` (unique; `prefix` defaults to `.<name>-`).
    `fsync`: fsync the data before the rename (see the module docstring).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    if tmp_name is not None:
        tmp = path.with_name(tmp_name)
        fh = open(tmp, mode, encoding=None if mode == "wb" else encoding or "utf-8")
    else:
        fd, name = tempfile.mkstemp(prefix=prefix if prefix is not None else f".{path.name}-", suffix=".tmp",
                                    dir=path.parent)
        tmp = Path(name)
        try:
            fh = os.fdopen(fd, mode, encoding=None if mode == "wb" else encoding or "utf-8")
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
    try:
        try:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        finally:
            fh.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str, *, fsync: bool = True, tmp_name: str | None = None,
                 prefix: str | None = None, encoding: str = "utf-8") -> None:
    """Replace `path` with `data` (str is encoded with `encoding`) atomically, through a temporary
    in the same directory (see `atomic_file` for `tmp_name`, `prefix` and `fsync`)."""
    if isinstance(data, str):
        data = data.encode(encoding)
    with atomic_file(path, "wb", fsync=fsync, tmp_name=tmp_name, prefix=prefix) as fh:
        fh.write(data)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, fsync: bool = True, tmp_name: str | None = None,
                      prefix: str | None = None, **dump: Any) -> None:
    """Replace `path` with `obj` as JSON (`json.dump(obj, file, **dump)`, UTF-8) atomically, through
    a temporary in the same directory (see `atomic_file`); an object that cannot be serialised
    raises, and leaves `path` as it was."""
    with atomic_file(path, "w", fsync=fsync, tmp_name=tmp_name, prefix=prefix, encoding="utf-8") as fh:
        json.dump(obj, fh, **dump)
