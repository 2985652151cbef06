"""One run directory for every rank: rank 0 writes it, the ranks agree on every decision.

- `RankSync` is the distributed part of the `Monitor` (`Monitor.ranks`): each metrics event is
  reduced over the ranks before it is written (`reduce_metrics`), in the same collective each rank's
  latest system sample travels to rank 0 (so `system` events list every rank's device and GPU), and
  evaluation metrics are rank 0's on every rank (every rank then ends a stage at the same step).
- `RankMonitor` is the monitor of ranks 1..R-1: the same calls, nothing written to the run's files
  (status, events); their log lines go to `train.rank-<r>.log`.
- `DistributedControl` is `RunControl` for a world: rank 0 reads the control file (stop, pause,
  resume, checkpoint), any rank may get a signal, and at every poll the flags are combined over the
  ranks (one small all-reduce), so `dswb runs stop` stops every rank at the same step.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from dswb.engine.distributed.world import World, reduce_metrics
from dswb.engine.telemetry.control import SignalHandlers
from dswb.engine.telemetry.monitor import Monitor
from dswb.rundir.events import AppendFile
from dswb.rundir.layout import RunPaths
from dswb.stats import StatsBook


def rank_log(paths: RunPaths, rank: int):
    return paths.root / f"train.rank-{rank}.log"


class RankSync:
    """The collectives a `Monitor` makes in a distributed run (every rank calls them in the same order)."""

    def __init__(self, world: World, sampler: Any = None) -> None:
        self.world = world
        self.sampler = sampler            # this rank's SystemSampler, once started
        self.samples: list[dict] = []     # every rank's latest system sample, from the last metrics call

    def reduce(self, metrics: dict) -> dict:
        local = self.sampler.latest() if self.sampler is not None else {}
        gathered = self.world.all_gather((metrics, local))
        self.samples = [sample for _, sample in gathered]
        return reduce_metrics([m for m, _ in gathered], same_data=self.world.data_size == 1)

    def agree(self, metrics: dict) -> dict:
        return self.world.broadcast(metrics)

    def system_ranks(self, local: dict) -> list[dict]:
        """One entry per rank: its rank, host, device (and GPU) and latest system sample."""
        rows = []
        for r, info in enumerate(self.world.ranks):
            sample = local if r == self.world.rank else (self.samples[r] if r < len(self.samples) else {})
            rows.append({**{k: info[k] for k in ("rank", "host", "device", "gpu_name") if k in info}, **sample})
        return rows


class _NoEvents:
    """The events sink of a rank that does not write events."""

    def emit(self, kind: str, stage: str | None, step: int, **fields: Any) -> dict:
        return {"t": round(time.time(), 3), "kind": kind, "stage": stage, "step": step, **fields}

    def close(self) -> None:
        pass


class RankMonitor(Monitor):
    """The monitor of a rank other than 0: it takes part in the collectives, writes only its log."""

    def __init__(self, paths: RunPaths, status: dict, world: World, ranks: RankSync, ema: float = 0.9) -> None:
        self.paths = paths
        self.status = status
        self.stats = StatsBook(ema)
        self.reporter = None
        self.ranks = ranks
        self.events = _NoEvents()
        self._log = AppendFile(rank_log(paths, world.rank))
        self._last_status_write = 0.0
        self._alerted = {}

    def write_status(self, force: bool = False, **fields: Any) -> None:
        self.status.update(fields)

    def finish(self, state: str, error: str | None, ended: float) -> list[str]:
        try:
            self.log(f"rank ends: {state}" + (f" ({error})" if error else ""), level="error" if error else "info",
                     event=False)
        except OSError:
            pass
        self.close()
        return []


class DistributedControl(SignalHandlers):
    """`RunControl`'s interface for a world (see the module docstring). `local` is this rank's own
    `RunControl` (rank 0 reads the control file through it), for the moments a rank acts alone
    (rank 0 preparing the data while the others wait)."""

    SECOND_SIGNAL_S = 2.0   # torchrun forwards the terminal's Ctrl-C: two SIGINTs arrive together

    def __init__(self, local: Any, world: World) -> None:
        self.local = local
        self.world = world
        self.stop_requested = False
        self.stop_reason = ""
        self.paused = False
        self.checkpoint_requested = False
        self.acted: list[str] = []
        self._first_signal = 0.0

    def _on_signal(self, signum, frame) -> None:
        now = time.monotonic()
        if self.local.stop_requested:
            if signum == signal.SIGINT and now - self._first_signal > self.SECOND_SIGNAL_S:
                raise KeyboardInterrupt
            return
        self._first_signal = now
        self.local.stop_requested = True
        self.local.stop_reason = signal.Signals(signum).name

    def poll(self) -> list[str]:
        """Read this rank's commands and signals, then agree with every rank (a collective)."""
        commands = self.local.poll() if self.world.is_main else []
        main = self.world.is_main
        flags = self.world.max([1.0 if self.local.stop_requested else 0.0,
                                1.0 if main and self.local.paused else 0.0,
                                1.0 if main and self.local.checkpoint_requested else 0.0])
        self.local.checkpoint_requested = False
        if flags[0] and not self.stop_requested:
            self.stop_requested = True
            self.stop_reason = self.local.stop_reason or "another rank was asked to stop"
        self.paused = bool(flags[1])
        if flags[2]:
            self.checkpoint_requested = True
        return commands
