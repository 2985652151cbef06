"""The distributed run's world: one process per device under torchrun, PyTorch's own engine.

`ensure_world(config)` joins the process group when this process was started by torchrun
(`dswb run --nproc N`, or `torchrun -m dswb run ...`), or makes a world of one process when the
config asks for a distributed mode (`[parallel] mode = "ddp" | "fsdp" | "pipeline"`) without torchrun
(e.g. resuming a 2-process run on 1 process). Backend: nccl on GPUs (each rank on GPU `LOCAL_RANK`),
gloo on CPUs; object collectives and the per-step control go through a gloo group either way, with
the config's timeout (`parallel.timeout_s`), so a rank that hangs fails the run after that long.

`active()` is the world of this process (None in a plain single-process run): the rest of the
engine asks it, so nothing else changes shape. `shutdown(code)` ends a torchrun process the way the
gloo trials showed is clean: `barrier(); destroy_process_group(); os._exit(code)` (15 of 15 clean
exits, where 10-25% of runs aborted at exit after `destroy_process_group()` alone; docs/parallel.md).

Pure functions: `rank_share` (a rank's block of a list), `reduce_metrics` (per-rank metrics to the
run's), `reshard_consumed` (a data position across world sizes).
"""

from __future__ import annotations

import math
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from dswb.config.parallel import DISTRIBUTED_MODES, validate_distributed
from dswb.errors import UserError
from dswb.launch import under_torchrun

_WORLD: "World | None" = None
FAILURE_KEY = "dswb/failure/"          # + rank: a rank's one-line error, left in the store before it exits

# How the run's metrics combine the ranks' values (`reduce_metrics`); the rest are averaged.
SUM_METRICS = {"tokens_per_s", "tokens_real", "tokens_padded", "batch_size", "tflops", "completion_tokens_per_s",
               "rows_trained"}
MAX_METRICS = {"step_time_s", "data_wait_s", "eta_s", "ratio_max", "completions/max_length", "seq_len"}
MIN_METRICS = {"completions/min_length"}
MAX_PREFIXES = ("timing/",)


@dataclass
class World:
    """This process's place in the run: rank, world size, device, and the collectives the engine uses."""

    rank: int
    size: int
    local_rank: int
    device: Any                     # torch.device
    backend: str
    mode: str                       # ddp, fsdp or pipeline
    timeout_s: float
    created_here: bool = False      # a world of one made in this process (destroyed by `end_world`)
    ranks: list[dict] = field(default_factory=list)   # every rank's rank, host, pid, device (after `describe_ranks`)
    _objects: Any = None            # the gloo group for objects and control

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_rank(self) -> int:
        """This rank's data shard: every rank reads its own in DDP/FSDP, all read the same in a pipeline."""
        return 0 if self.mode == "pipeline" else self.rank

    @property
    def data_size(self) -> int:
        return 1 if self.mode == "pipeline" else self.size

    def describe(self) -> str:
        where = "; ".join(f"rank {r['rank']}: {r['device']} on {r['host']} (pid {r['pid']})" for r in self.ranks[:8])
        more = f"; ... {len(self.ranks) - 8} more" if len(self.ranks) > 8 else ""
        return f"distributed: {self.mode} over {self.size} process{'es' if self.size > 1 else ''} ({self.backend}): {where}{more}"

    # -- collectives ------------------------------------------------------------------------
    def barrier(self) -> None:
        import torch.distributed as dist

        if self.size > 1:
            dist.barrier(group=self._objects)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (float64 on the CPU group)."""
        return self._reduce(values, "sum")

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, "max")

    def _reduce(self, values: list[float], op: str) -> list[float]:
        if self.size == 1:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=self._objects)
        return t.tolist()

    def all_true(self, flag: bool) -> bool:
        return self.max([0.0 if flag else 1.0])[0] == 0.0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._objects)
        return box[0]

    def all_gather(self, obj: Any) -> list:
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.size
        dist.all_gather_object(out, obj, group=self._objects)
        return out

    def describe_ranks(self) -> list[dict]:
        """Every rank's host, pid and device (and GPU name), gathered once; kept in `ranks`."""
        mine = {"rank": self.rank, "local_rank": self.local_rank, "host": socket.gethostname(), "pid": os.getpid(),
                "device": str(self.device)}
        if self.device.type == "cuda":
            import torch

            props = torch.cuda.get_device_properties(self.device)
            mine.update(gpu_name=props.name, gpu_mem_total_mb=round(props.total_memory / 2**20))
        self.ranks = self.all_gather(mine)
        return self.ranks

    def main_first(self, fn, passthrough: tuple = ()):
        """Rank 0 runs `fn` (e.g. preparing the data cache) while the other ranks wait for it with no
        collective timeout, then they run `fn` too (a cache hit). Rank 0's exception is raised on every
        rank: as the same type for the `passthrough` types, else as `TrainingFailed`."""
        if self.size == 1:
            return fn()
        from dswb.errors import TrainingFailed

        store = _store()
        self._first_count = getattr(self, "_first_count", 0) + 1
        key = f"dswb/main_first/{self._first_count}"
        if self.is_main:
            try:
                result = fn()
            except BaseException as exc:
                kind = next((i for i, t in enumerate(passthrough) if isinstance(exc, t)), -1)
                store.set(key, f"{kind}:{' '.join(str(exc).split())[:300] or type(exc).__name__}")
                raise
            store.set(key, "ok")
            return result
        store.wait([key], timedelta(days=30))
        told = store.get(key).decode("utf-8", "replace")
        if told != "ok":
            kind, _, message = told.partition(":")
            if int(kind) >= 0:
                raise passthrough[int(kind)](message)
            raise TrainingFailed(f"rank 0 failed: {message}")
        return fn()

    # -- failures ---------------------------------------------------------------------------
    def report_failure(self, message: str) -> None:
        """Leave this rank's one-line error where rank 0 can read it (the launcher's store)."""
        store = _store()
        if store is not None:
            try:
                store.set(f"{FAILURE_KEY}{self.rank}", message[:500])
            except Exception:  # noqa: BLE001 - the store may be gone with the launcher
                pass

    def peer_failures(self) -> dict[int, str]:
        """The errors other ranks left in the store (empty when none did or the store is gone)."""
        store = _store()
        found: dict[int, str] = {}
        if store is None:
            return found
        for r in range(self.size):
            if r == self.rank:
                continue
            try:
                if store.check([f"{FAILURE_KEY}{r}"]):
                    found[r] = store.get(f"{FAILURE_KEY}{r}").decode("utf-8", "replace")
            except Exception:  # noqa: BLE001
                break
        return found

    def gone_ranks(self) -> list[int]:
        """Ranks on this host whose process no longer exists (known from `describe_ranks`)."""
        from dswb.rundir.status import pid_alive

        host = socket.gethostname()
        return [r["rank"] for r in self.ranks if r.get("host") == host and r["rank"] != self.rank
                and not pid_alive(int(r["pid"]))]

    def explain_failure(self, exc: BaseException) -> str:
        """One line for a collective that failed: which rank, and why when it said so."""
        detail = re.sub(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", " ".join(str(exc).split()))[:160] or type(exc).__name__
        peers = self.peer_failures()
        if peers:
            r, message = sorted(peers.items())[0]
            return f"rank {r} of {self.size} failed: {message}"
        gone = self.gone_ranks()
        if gone:
            pids = ", ".join(f"rank {r} (pid {self.ranks[r]['pid']})" for r in gone)
            return (f"{pids} of {self.size} died (killed or crashed); a collective on rank {self.rank} failed: "
                    f"{detail}")
        if "timeout" in detail.lower() or "timed out" in detail.lower():
            return (f"a rank did not answer within parallel.timeout_s = {self.timeout_s:g}s (hung or dead); "
                    f"a collective on rank {self.rank} failed: {detail}")
        return f"a rank of {self.size} stopped answering (died or hung); a collective on rank {self.rank} failed: {detail}"


def is_collective_failure(exc: BaseException) -> bool:
    """Did a collective (or the store) fail because a peer died, hung or went away?"""
    try:
        import torch.distributed as dist

        if isinstance(exc, dist.DistError):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out waiting",
        "gloo", "Gloo", "NCCL", "ProcessGroup", "Socket Timeout", "connection refused"))


def _store():
    try:
        import torch.distributed as dist

        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no default group, or a store without a server
        return None


def active() -> World | None:
    """The world of this process, or None in a plain single-process run."""
    return _WORLD


def ensure_world(config) -> World | None:
    """Join (or make) the world this config and environment ask for; None for a plain run.

    Under torchrun a run with `mode = "none"` trains with DDP (the config is updated, so its
    `config.toml` says so); `mode = "layers"` cannot run under torchrun."""
    global _WORLD
    mode = config.parallel.mode
    if under_torchrun():
        if mode == "layers":
            raise UserError("parallel.mode = 'layers' spreads one model over the devices of ONE process: run it "
                            "without --nproc / torchrun, or use mode = 'ddp', 'fsdp' or 'pipeline'")
        if mode == "none":
            config.parallel.mode = mode = "ddp"
            validate_distributed(config, "parallel (under torchrun: mode 'none' trains with ddp)")
    elif mode not in DISTRIBUTED_MODES:
        return _WORLD   # None, unless an earlier run of this process made a world (it keeps its mode)
    if _WORLD is not None:   # another run in the same processes (tests): same group, this run's mode
        _WORLD.mode, _WORLD.timeout_s = mode, config.parallel.timeout_s
        return _WORLD
    _WORLD = _init(config, mode)
    return _WORLD


def _init(config, mode: str) -> World:
    import torch
    import torch.distributed as dist

    from dswb.engine.model.device import select_device

    device = select_device(config.run.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=config.parallel.timeout_s)
    created = False
    if not dist.is_initialized():
        if under_torchrun():
            kwargs = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
        else:   # a world of one process: an in-memory store, no port
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
            created = True
    world = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                  device=device, backend=backend, mode=mode, timeout_s=config.parallel.timeout_s,
                  created_here=created)
    world._objects = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return world


def end_world() -> None:
    """Forget the world; destroy the process group when it was a world of one made here (an
    in-process run, e.g. a test). A torchrun process ends with `shutdown` instead."""
    global _WORLD
    world, _WORLD = _WORLD, None
    if world is not None and world.created_here:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def shutdown(code: int, clean: bool = True) -> None:
    """End this torchrun process: wait for the other ranks, tear the group down, exit at once.

    `clean=False` (a failed run) skips the barrier: the other ranks may be gone or stuck in
    another collective; they see this one leave and fail fast."""
    try:
        import torch.distributed as dist

        if clean and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a peer that left first: nothing more to wait for
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


# -- pure functions ---------------------------------------------------------------------------

def rank_share(n: int, rank: int, size: int) -> tuple[int, int]:
    """`[lo, hi)`: rank's contiguous block of n items; blocks differ in size by at most one and
    together cover 0..n-1 in order."""
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def reduce_metrics(per_rank: list[dict], same_data: bool = False) -> dict:
    """The run's metrics from every rank's: sums for counts and throughputs (`SUM_METRICS`), the
    slowest rank for times (`MAX_METRICS`, `timing/*`), the minimum where a minimum is asked, the
    mean of the ranks otherwise (a loss the step made global is the same on every rank);
    `pad_efficiency` is recomputed from the summed token counts. With `same_data` (a pipeline: every
    rank works on the same tokens) token counts and throughputs are not summed; `tflops` still is
    (each stage counts its own FLOPs). Non-finite values propagate."""
    keys = list(dict.fromkeys(k for m in per_rank for k in m))
    summed = {"tflops"} if same_data else SUM_METRICS
    out: dict = {}
    for key in keys:
        values = [m[key] for m in per_rank if key in m and isinstance(m[key], (int, float))]
        if not values:
            continue
        if key in summed:
            out[key] = sum(values)
        elif key in MAX_METRICS or key.startswith(MAX_PREFIXES):
            out[key] = max(values) if all(math.isfinite(v) for v in values) else math.nan
        elif key in MIN_METRICS:
            out[key] = min(values)
        else:
            out[key] = sum(values) / len(values)
    if "tokens_real" in out and out.get("tokens_padded"):
        out["pad_efficiency"] = out["tokens_real"] / out["tokens_padded"]
    return out


def reshard_consumed(consumed: int, old_size: int, new_size: int) -> tuple[int, int]:
    """A per-rank batch count written by `old_size` ranks, for `new_size` ranks: (the new per-rank
    count, batches skipped). Together the old ranks took `consumed * old_size` batches; the new
    ranks start at the next multiple of `new_size` (rounding up skips fewer than `new_size`)."""
    taken = consumed * old_size
    per_rank = -(-taken // new_size)
    return per_rank, per_rank * new_size - taken
