"""A preparation's bookkeeping: throttled progress events, and `progress.json`, its resume point.

`Progress` turns the phases' counters into events `{phase, fraction, documents, mb, tokens,
elapsed_s, eta_s}` for the `progress` callback of `prepare_files`, at most one per
`PROGRESS_EVERY_S` (the last one of a phase forced). `save_state` writes, after every text shard,
the read phase's position and counters (`ingest.ReadState`) and the timings to `progress.json`
in the preparation directory; `load_state` reads them back when they belong to the same cache
key and version, and `clear_after` removes the text shards an interruption left past them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from dswb.engine.data.corpus.ingest import ReadState
from dswb.util.atomic import write_json_atomic

PROGRESS_VERSION = 1
PROGRESS_EVERY_S = 1.0


class Progress:
    """Throttled progress events `{phase, fraction, documents, mb, tokens, elapsed_s, eta_s}`."""

    def __init__(self, callback: Callable[[dict], None] | None, phase: str, total: float) -> None:
        self.callback, self.phase, self.total = callback, phase, max(total, 1e-9)
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: float, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        if self.callback is None or (not force and now - self._last < PROGRESS_EVERY_S):
            return
        self._last = now
        fraction = min(1.0, done / self.total)
        elapsed = now - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        self.callback({"phase": self.phase, "fraction": round(fraction, 4), "elapsed_s": round(elapsed, 2),
                       "eta_s": None if eta is None else round(eta, 1), **fields})


def load_state(tmp: Path, key: str) -> tuple[ReadState, dict] | None:
    """(read state, everything saved) from `tmp/progress.json`, or None if absent, unreadable,
    or saved for another key or version."""
    try:
        saved = json.loads((tmp / "progress.json").read_text(encoding="utf-8"))
        if saved.get("key") != key or saved.get("version") != PROGRESS_VERSION:
            return None
        return ReadState(**saved["read"]), saved
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save_state(tmp: Path, key: str, state: ReadState, extra: dict) -> None:
    blob = {"version": PROGRESS_VERSION, "key": key, "read": state.__dict__, **extra}
    write_json_atomic(tmp / "progress.json", blob, fsync=False, tmp_name="progress.json.part")


def clear_after(tmp: Path, n_text: int) -> None:
    """Remove text shards past the last complete one (left by an interruption)."""
    for path in tmp.glob("text-*"):
        try:
            k = int(path.name[5:10])
        except ValueError:
            continue
        if k >= n_text or path.name.endswith(".part"):
            path.unlink(missing_ok=True)
