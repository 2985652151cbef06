"""A lower CPU priority for the dashboard than for the training it watches. No Textual here.

On Linux the nice value belongs to each thread, and a new thread or process starts with the
value of the thread that created it. `NormalPriority` starts one worker thread *before* the
dashboard lowers its own priority; runs launched or resumed from the dashboard are started from
that thread, so they keep the priority the user started `dswb tui` with, while the UI and its
reader threads (created later) run niced.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class NormalPriority:
    """One thread kept at the starting priority; `call(fn, ...)` runs `fn` there and waits."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="normal-priority")
        self._pool.submit(lambda: None).result()  # the thread exists now, at today's priority

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.submit(fn, *args).result()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *args: self.call(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)


def lower_priority(increment: int) -> int | None:
    """Make the calling thread (and the threads and processes it starts from now on) `increment`
    nicer; returns the new nice value, or None if it could not be changed."""
    if increment <= 0 or not hasattr(os, "nice"):
        return None
    try:
        return os.nice(increment)
    except OSError:
        return None
