"""Data across ranks: which share of the data each rank reads, and resuming it on another world size.

- Language-model batches: `BatchStream(..., **stream_shard())` takes every R-th batch of the endless
  plan (`dswb.engine.data.batches.loader`), the same token budget on every rank; `load_stream_state` resumes a
  position written by a different number of ranks (`reshard_consumed`).
- Preference pairs: `RankedPairs` gives rank r the micro-batches r, r + R, ... of the one seeded
  `PairStream` every rank walks, so its position (saved by rank 0) is the same on every rank and for
  any world size.
- RL prompts: rank r generates its contiguous block of an iteration's prompts (`prompt_block`),
  with the random numbers the one-process run would give those rows (`skip_rows`).
"""

from __future__ import annotations

from typing import Any

from dswb.engine.distributed.world import active, rank_share, reshard_consumed


def stream_shard() -> dict:
    """`rank=` and `world_size=` of this process's data shard for `BatchStream` (empty: one process)."""
    world = active()
    if world is None or world.data_size == 1:
        return {}
    return {"rank": world.data_rank, "world_size": world.data_size}


def load_stream_state(stream: Any, state: dict) -> str | None:
    """Restore a `BatchStream` position, also one written by another number of ranks; returns a
    line saying what changed (None when the world size is the same)."""
    old = int(state.get("world_size", 1))
    size = stream.world_size
    if old == size:
        stream.load_state_dict(state)
        return None
    consumed, skipped = reshard_consumed(int(state.get("consumed", 0)), old, size)
    if size > 1:
        stream.load_state_dict({"consumed": consumed, "world_size": size})
    else:
        epoch, index = 0, consumed
        while index >= len(stream.plan_for(epoch)):
            index -= len(stream.plan_for(epoch))
            epoch += 1
        stream.load_state_dict({"epoch": epoch, "index": index, "consumed": consumed})
    note = f"data position of {old} rank{'s' if old > 1 else ''} resumed on {size}"
    return note + (f" ({skipped} batch{'es' if skipped > 1 else ''} skipped to keep the ranks aligned)" if skipped else "")


class RankedPairs:
    """Rank r's micro-batches of a shared stream: r, r + R, r + 2R, ... (R ranks)."""

    def __init__(self, stream: Any, rank: int, size: int) -> None:
        self.stream, self.rank, self.size = stream, rank, size

    def __iter__(self) -> "RankedPairs":
        return self

    def __next__(self):
        picked = None
        for r in range(self.size):
            item = next(self.stream)
            if r == self.rank:
                picked = item
        return picked

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def shard_pairs(stream: Any) -> Any:
    """`stream` itself in one process, else this rank's `RankedPairs` of it."""
    world = active()
    if world is None or world.data_size == 1:
        return stream
    return RankedPairs(stream, world.data_rank, world.data_size)


def prompt_block(n: int) -> tuple[int, int]:
    """`[lo, hi)` of an iteration's n prompts that this rank generates (all of them in one process)."""
    world = active()
    if world is None:
        return 0, n
    return rank_share(n, world.rank, world.size)


def skip_rows(generator: Any, rows: int, steps: int) -> None:
    """Advance `generator` past the uniforms of `rows` sampled rows of `steps` tokens (the rows of the
    ranks before this one), so this rank's rows draw what they draw in one process. The sampler draws
    `[rows, steps]` uniforms at once from a CPU generator, which fills them in order."""
    if rows > 0:
        import torch

        torch.rand(rows, steps, generator=generator, device=generator.device)
