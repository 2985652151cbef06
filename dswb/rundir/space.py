"""Disk space: free bytes where a path lives, and telling a full disk from other write errors.

Standard library only (the CLI and the engine share it). A full disk shows up in several guises:
an `OSError` with errno ENOSPC (or EDQUOT, a full quota), safetensors' `SafetensorError` with
"No space left on device (os error 28)" in its text, and torch.save's
`RuntimeError: [enforce fail at inline_container.cc] . unexpected pos ...`, which hides the errno
(torch.save to a file object chains the real `OSError` as its context; to a path it does not),
and numpy's `OSError: 7040 requested and 4032 written` (a short write, no errno). The errno-less
messages count as a full disk only when a filesystem the run writes to is in fact nearly full.
`DiskFull` is the one-line error every writer raises instead.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from dswb.util.fmt import fmt_bytes

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")
# Messages of writers that lose the errno: a full disk only if the filesystem is nearly full.
ERRNO_LESS_TEXTS = ("unexpected pos", "basic_ios::clear", "file write failed", "requested and")
NEARLY_FULL_BYTES = 64 << 20


class DiskFull(OSError):
    """A write failed because the filesystem is full: one line naming the path and the free space.

    An `OSError` with errno ENOSPC, so `except OSError` still catches it.
    """

    def __init__(self, path: str | Path, free: int | None = None) -> None:
        self.path = str(path)
        self.free = free_bytes(path) if free is None else free
        super().__init__(f"no space left on device writing {self.path} "
                         f"({fmt_bytes(self.free, missing='unknown space')} free there); free some space, then "
                         f"`dswb run --resume` continues from the last checkpoint")
        self.errno = errno.ENOSPC


def existing_ancestor(path: str | Path) -> Path:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int | None:
    """Bytes available to this user on the filesystem holding `path` (or its nearest existing parent)."""
    try:
        return shutil.disk_usage(existing_ancestor(path)).free
    except OSError:
        return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 16:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def is_disk_full(exc: BaseException, paths: str | Path | list | None = None) -> bool:
    """True if `exc` (or an exception it was raised from) says the disk is full.

    `paths`, when given (one or several), lets an errno-less message (torch's "unexpected pos")
    count as a full disk if the filesystem holding one of them has under 64 MiB left.
    """
    candidates = [] if paths is None else [paths] if isinstance(paths, (str, Path)) else list(paths)
    for e in _chain(exc):
        if isinstance(e, DiskFull):
            return True
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        text = str(e).lower()
        if any(t in text for t in DISK_FULL_TEXTS):
            return True
        if candidates and any(t in text for t in ERRNO_LESS_TEXTS):
            frees = [free_bytes(p) for p in candidates]
            if any(f is not None and f < NEARLY_FULL_BYTES for f in frees):
                return True
    return False


def failed_path(exc: BaseException) -> str | None:
    """The file an `OSError` in the chain names, if any (`open` names it; `write` does not)."""
    for e in _chain(exc):
        if isinstance(e, DiskFull):
            return e.path
        if isinstance(e, OSError) and e.filename:
            return os.fsdecode(e.filename)
    return None


def disk_full_error(exc: BaseException, candidates: list[Path]) -> DiskFull:
    """A `DiskFull` for an error raised by code that did not say where it was writing.

    Names the file from the error when it has one, else the candidate directory with the least
    free space (the run directory, the data cache, ...).
    """
    if isinstance(exc, DiskFull):
        return exc
    path = failed_path(exc)
    if path is None:
        known = [(free_bytes(c), str(c)) for c in candidates]
        known = [k for k in known if k[0] is not None]
        path = min(known)[1] if known else (str(candidates[0]) if candidates else "?")
    return DiskFull(path)


def checkpoints_room(free: int, checkpoint_bytes: int) -> int:
    """How many more checkpoints of `checkpoint_bytes` fit in `free` bytes."""
    return free // max(1, checkpoint_bytes)
