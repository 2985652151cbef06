"""The training data stream: planned, collated batches across epochs, and a background prefetcher.

`BatchStream` is an endless iterator of `Batch`es: epoch e follows the plan
`plan_*(lengths, seed, e)` (see `dswb.engine.data.batches.batching`), so its position is `(epoch, index)`
plus `consumed`, the number of batches handed out since the start (it drives the curriculum).
`state_dict()` is the position of the NEXT batch; `load_state_dict()` on a fresh stream resumes
exactly there.

`Prefetcher` collates (and pins) the next batches in a background thread. Its `state_dict()` is
what the CONSUMER has received (each `Batch` carries `next_state`), never what the thread has
produced ahead, so checkpoint `prefetcher.state_dict()`, not the stream's. To resume: build a
new stream, `load_state_dict`, wrap it in a new Prefetcher.

Sequence-length warmup: the crop length of a batch is a pure function of its ordinal
(`length_schedule(consumed)`, by default `seq_len_at(consumed // batches_per_step, ...)` from the
config), so prefetching ahead and resuming give exactly the same batches. `set_max_len(n)` is a
manual cap on top of it; it applies to batches collated after the call (with a Prefetcher, up
to `depth` batches later), so it is not resume-exact: prefer `length_schedule`.

Samples may be a list of lists or a memory-mapped `SampleView` of the sample store
(dswb.engine.data.corpus.store): lengths are taken from `samples.lengths` when it has them (a numpy
array), so nothing holds one Python object per sample; only the samples of the batch being
collated are read.

Rank sharding (`rank`, `world_size`): rank r of R takes the batches `r, r + R, r + 2R, ...` of
the endless sequence of epoch plans (every rank plans the same epochs), so the ranks are
disjoint, together complete, each batch is under the same `max_tokens` budget, and every rank
takes one batch per call. Its position is fully given by `consumed` (its count of batches):
`load_state_dict` re-derives (epoch, index) from it, so rank 0's checkpoint resumes any rank.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from dswb.config.schema import BatchingConfig
from dswb.engine.data.batches.batching import (PackedPlan, Plan, length_histogram, plan_bucketed, plan_fixed,
                                               plan_packed, rank_position, seq_len_at)
from dswb.engine.data.batches.collate import Batch, collate_packed, collate_padded
from dswb.errors import UserError

__all__ = ["BatchStream", "Prefetcher", "length_histogram", "sample_lengths"]


class BatchStream:
    """Endless, deterministic, resumable stream of collated batches (see module docstring)."""

    def __init__(self, samples: Sequence[Sequence[int]], cfg: BatchingConfig, pad_id: int,
                 max_len: int, seed: int, *, length_schedule: Callable[[int], int] | None = None,
                 batches_per_step: int = 1, loss_masks: Sequence[Sequence[int]] | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if len(samples) == 0:
            raise UserError("batching: the training set is empty")
        if loss_masks is not None and len(loss_masks) != len(samples):
            raise ValueError(f"{len(loss_masks)} loss masks for {len(samples)} samples")
        rank_position(0, rank, world_size)  # validates the rank
        self.samples = samples
        self.loss_masks = loss_masks
        self.rank, self.world_size = rank, world_size
        self.lengths = sample_lengths(samples)
        self.cfg = cfg
        self.pad_id = pad_id
        self.max_len = max_len
        self.seed = seed
        self.row_len = min(max_len, cfg.max_tokens)
        if length_schedule is None and cfg.seq_len_warmup_steps > 0:
            def length_schedule(ordinal: int) -> int:
                return seq_len_at(ordinal // max(1, batches_per_step), cfg.seq_len_warmup_steps,
                                  cfg.seq_len_warmup_start, max_len)
        self.length_schedule = length_schedule
        self._manual_max_len: int | None = None
        self.epoch = self.index = self.consumed = 0
        self._plan: Plan | PackedPlan | None = None
        self._plan_epoch = -1
        if rank:
            self._seek(rank)

    # -- planning -----------------------------------------------------------------------------
    def plan_for(self, epoch: int) -> Plan | PackedPlan:
        """The plan of `epoch` (cached for the current one)."""
        if epoch == self._plan_epoch and self._plan is not None:
            return self._plan
        c = self.cfg
        if c.mode == "bucket":
            plan = plan_bucketed(self.lengths, c.max_tokens, self.seed, epoch, c.megabatch,
                                 self.max_len, c.oversize)
        elif c.mode == "pack":
            plan = plan_packed(self.lengths, c.max_tokens, self.seed, epoch, self.row_len,
                               c.oversize, c.megabatch)
        else:
            plan = plan_fixed(self.lengths, c.batch_size, self.seed, epoch, self.max_len, c.oversize)
        if len(plan) == 0:
            raise UserError(f"batching: no sample fits (all {len(self.lengths)} samples rejected or empty; "
                            f"batching.max_tokens={c.max_tokens}, max length {self.max_len})")
        self._plan, self._plan_epoch = plan, epoch
        return plan

    @property
    def batches_per_epoch(self) -> int:
        return len(self.plan_for(self.epoch))

    @property
    def counters(self) -> dict:
        """Samples truncated / rejected / split / empty in the current epoch's plan."""
        p = self.plan_for(self.epoch)
        return {"truncated": p.truncated, "rejected": p.rejected,
                "split": getattr(p, "split", 0), "empty": p.empty}

    # -- curriculum ---------------------------------------------------------------------------
    def set_max_len(self, n: int | None) -> None:
        """Manual cap on the longest sequence of batches collated from now on (None = off)."""
        self._manual_max_len = n

    def current_max_len(self, ordinal: int | None = None) -> int:
        """Crop length for the batch with this ordinal (default: the next one)."""
        n = self.max_len
        if self.length_schedule is not None:
            n = min(n, self.length_schedule(self.consumed if ordinal is None else ordinal))
        if self._manual_max_len is not None:
            n = min(n, self._manual_max_len)
        return max(n, 1)

    # -- position -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Position of the next batch: {"epoch", "index", "consumed"} (+ rank, world_size when sharded)."""
        state = {"epoch": self.epoch, "index": self.index, "consumed": self.consumed}
        if self.world_size > 1:
            state.update(rank=self.rank, world_size=self.world_size)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state.get("consumed", 0))
        if self.world_size > 1:
            if int(state.get("world_size", self.world_size)) != self.world_size:
                raise ValueError(f"data state of {state.get('world_size')} ranks loaded into {self.world_size}")
            self.epoch = self.index = 0
            self._seek(rank_position(self.consumed, self.rank, self.world_size))
            return
        self.epoch = int(state["epoch"])
        self.index = int(state["index"])

    def _seek(self, batches: int) -> None:
        """Move the position `batches` batches forward, across epoch plans."""
        self.index += batches
        plan = self.plan_for(self.epoch)
        while self.index >= len(plan):
            self.epoch, self.index = self.epoch + 1, self.index - len(plan)
            plan = self.plan_for(self.epoch)

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        plan = self.plan_for(self.epoch)
        while self.index >= len(plan):
            self.epoch, self.index = self.epoch + 1, self.index - len(plan)
            plan = self.plan_for(self.epoch)
        crop = self.current_max_len()
        if isinstance(plan, PackedPlan):
            rows = [[(i, s, min(e, s + crop)) for i, s, e in row] for row in plan.batches[self.index]]
            batch = collate_packed(rows, self.samples, self.pad_id, self.row_len, self.loss_masks)
        else:
            idx = plan.batches[self.index]
            cut = plan.lengths[idx].tolist()
            picked = [_as_list(x[:n]) for x, n in zip(_take(self.samples, idx), cut)]
            masks = (None if self.loss_masks is None
                     else [_as_list(x[:n]) for x, n in zip(_take(self.loss_masks, idx), cut)])
            batch = collate_padded(picked, self.pad_id, crop, masks)
        batch.epoch, batch.index = self.epoch, self.index
        self.consumed += 1
        self._seek(self.world_size)
        batch.next_state = self.state_dict()
        return batch


def sample_lengths(samples: Sequence[Sequence[int]]) -> np.ndarray:
    """Lengths of `samples` as a numpy array: `samples.lengths` when it has them (a store view)."""
    lengths = getattr(samples, "lengths", None)
    if isinstance(lengths, np.ndarray):
        return lengths
    return np.fromiter((len(s) for s in samples), dtype=np.int64, count=len(samples))


def _as_list(x) -> list:
    return x.tolist() if hasattr(x, "tolist") else x


def _take(samples, idx: list[int]) -> list:
    """The samples at `idx`: one vectorized read from a store view, else plain indexing."""
    take = getattr(samples, "take", None)
    return take(idx) if take is not None else [samples[i] for i in idx]


_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Prepare the next `depth` batches in a background thread (depth 0: synchronous).

    Exceptions in the thread are re-raised in the consumer; `close()` (or `with`) stops it.
    `wait_s` is the total time the consumer waited for data, `last_wait_s` the last wait.
    """

    def __init__(self, batches: Iterable[Batch], depth: int = 2, pin: bool = False) -> None:
        self.source = batches
        self._it = iter(batches)
        self._state = batches.state_dict() if hasattr(batches, "state_dict") else None
        self.depth = depth
        self.pin = pin and torch.cuda.is_available()
        self.wait_s = 0.0
        self.last_wait_s = 0.0
        self.received = 0
        self._done = False
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._produce, name="dswb-prefetch", daemon=True)
            self._thread.start()

    def _prepare(self, item):
        return item.pin_memory() if self.pin and hasattr(item, "pin_memory") else item

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._it:
                if not self._put(self._prepare(item)):
                    return
            self._put(_END)
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Failure(error))

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Batch:
        if self._done:
            raise StopIteration
        start = time.perf_counter()
        if self._thread is None:
            try:
                item = self._prepare(next(self._it))
            except StopIteration:
                item = _END
        else:
            item = self._queue.get()
        self.last_wait_s = time.perf_counter() - start
        self.wait_s += self.last_wait_s
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            self.close()
            raise item.error
        self.received += 1
        state = getattr(item, "next_state", None)
        if state is not None:
            self._state = dict(state)
        return item

    def state_dict(self) -> dict | None:
        """Position after the last batch the consumer received (None if the source has none)."""
        return None if self._state is None else dict(self._state)

    def close(self) -> None:
        """Stop the thread and drop the batches prepared ahead; iteration ends."""
        self._done = True
        self._stop.set()
        if self._thread is not None:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=5.0)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
