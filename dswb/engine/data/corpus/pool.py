"""Where a preparation's work runs, and the lock that lets one process at a time prepare it.

`executor(workers)` is a `spawn` process pool of `data.workers` processes (initialized by
`work.init_worker`), or, for one worker, an inline executor with the same `submit` interface
that runs each call in this process when its result is asked for, so results never depend on
the number of workers. `locked(lock_path, log)` holds an exclusive `flock` on the preparation's
lock file; a second process preparing the same data logs that it waits, then waits.
"""

from __future__ import annotations

import fcntl
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

from dswb.engine.data.corpus.work import init_worker


class _Deferred:
    """A future that runs its call when its result is asked for (in this process)."""

    def __init__(self, fn, args) -> None:
        self._call = (fn, args)
        self._result: Any = None

    def done(self) -> bool:
        return self._call is None

    def result(self) -> Any:
        if self._call is not None:
            fn, args = self._call
            self._result, self._call = fn(*args), None
        return self._result


class _Inline:
    """The executor interface, run in this process (data.workers = 1), each call when needed."""

    def submit(self, fn, *args) -> _Deferred:
        return _Deferred(fn, args)


@contextmanager
def executor(workers: int) -> Iterator[Any]:
    if workers <= 1:
        yield _Inline()
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=init_worker)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def locked(lock_path: Path, log: Callable[[str], None]) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("data: another process is preparing the same data; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
