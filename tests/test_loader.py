"""The batch stream (epochs, exact resume, curriculum) and the background prefetcher."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import torch

from dswb.config.schema import BatchingConfig
from dswb.engine.data.batches.loader import BatchStream, Prefetcher, length_histogram
from dswb.errors import UserError


def corpus(n: int = 120, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 60, (n,), generator=g).tolist()
    return [torch.randint(1, 100, (k,), generator=g).tolist() for k in lengths]


def stream(mode: str = "bucket", **overrides) -> BatchStream:
    cfg = BatchingConfig(max_tokens=256, mode=mode, batch_size=8, megabatch=4, **overrides)
    return BatchStream(corpus(), cfg, pad_id=0, max_len=64, seed=3)


def same(a, b) -> bool:
    return (torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            and (a.epoch, a.index) == (b.epoch, b.index))


@pytest.mark.parametrize("mode", ["bucket", "pack"])
def test_stream_crosses_epochs_within_budget_and_covers_the_data(mode):
    s = stream(mode)
    per_epoch = [len(s.plan_for(0)), len(s.plan_for(1))]  # plans differ: so may their lengths
    batches = [next(s) for _ in range(sum(per_epoch) + 1)]
    assert [b.epoch for b in batches].count(0) == per_epoch[0]
    assert batches[-1].epoch == 2 and batches[-1].index == 0
    assert all(b.n_padded <= 256 and b.n_samples > 0 for b in batches)
    epoch0 = batches[:per_epoch[0]]
    assert sum(b.n_real for b in epoch0) == sum(len(x) for x in corpus())
    if mode == "pack":
        assert all(b.position_ids is not None and b.attention_mask is None for b in batches)


def test_fixed_mode_uses_batch_size():
    s = stream("fixed")
    sizes = [next(s).n_samples for _ in range(s.batches_per_epoch)]
    assert sizes[:-1] == [8] * (len(sizes) - 1) and sum(sizes) == 120


def test_resume_mid_epoch_gives_exactly_the_same_batches():
    reference = stream()
    expected = [next(reference) for _ in range(40)]
    first = stream()
    for _ in range(23):
        next(first)
    state = first.state_dict()
    assert state == {"epoch": expected[23].epoch, "index": expected[23].index, "consumed": 23}
    resumed = stream()
    resumed.load_state_dict(state)
    assert all(same(next(resumed), e) for e in expected[23:])


def test_prefetcher_state_is_what_the_consumer_received():
    reference = stream()
    expected = [next(reference) for _ in range(30)]
    with Prefetcher(stream(), depth=4) as pf:
        got = [next(pf) for _ in range(11)]
        time.sleep(0.05)  # let the thread run ahead
        state = pf.state_dict()
        assert pf.source.state_dict()["consumed"] > 11  # the producer is ahead ...
    assert state["consumed"] == 11                       # ... the checkpoint is not
    assert all(same(g, e) for g, e in zip(got, expected))
    resumed = stream()
    resumed.load_state_dict(state)
    with Prefetcher(resumed, depth=2) as pf:
        assert all(same(next(pf), e) for e in expected[11:])


def test_prefetcher_state_before_any_batch_is_the_source_position():
    s = stream()
    s.load_state_dict({"epoch": 1, "index": 2, "consumed": 9})
    with Prefetcher(s, depth=2) as pf:
        assert pf.state_dict() == {"epoch": 1, "index": 2, "consumed": 9}


def test_prefetcher_propagates_exceptions():
    def failing():
        yield 1
        raise RuntimeError("bad shard")

    pf = Prefetcher(failing(), depth=2)
    assert next(pf) == 1
    with pytest.raises(RuntimeError, match="bad shard"):
        next(pf)
    with pytest.raises(StopIteration):
        next(pf)


def test_prefetcher_depth_zero_is_synchronous_and_ends():
    pf = Prefetcher(iter([1, 2]), depth=0)
    assert list(pf) == [1, 2]
    assert pf.state_dict() is None


def test_prefetcher_measures_waits_and_stops_cleanly():
    def slow():
        while True:
            time.sleep(0.02)
            yield 0

    before = threading.active_count()
    pf = Prefetcher(slow(), depth=1)
    for _ in range(3):
        next(pf)
    assert pf.wait_s > 0.02 and pf.received == 3
    pf.close()
    assert not pf._thread.is_alive()
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(pf)


def test_prefetcher_hides_data_time_behind_compute():
    def slow():
        while True:
            time.sleep(0.01)
            yield 0

    with Prefetcher(slow(), depth=2) as pf:
        next(pf)
        waited = pf.wait_s
        for _ in range(5):
            time.sleep(0.05)  # the "training step", longer than making a batch
            next(pf)
        assert pf.wait_s - waited < 0.04  # a synchronous loader would wait 5 x 0.01 s


def test_seq_len_warmup_crops_deterministically_even_when_prefetched():
    kwargs = dict(seq_len_warmup_steps=10, seq_len_warmup_start=8)
    s = stream(**kwargs)
    widths = [next(s).input_ids.shape[1] for _ in range(25)]
    assert widths[0] <= 8 and widths[1] <= 13  # int(8 + (64 - 8) * 1 / 10)
    assert max(widths[15:]) > 8
    assert all(b.n_padded <= 256 for b in [next(s) for _ in range(10)])
    with Prefetcher(stream(**kwargs), depth=3) as pf:
        assert [next(pf).input_ids.shape[1] for _ in range(25)] == widths


def test_seq_len_warmup_counts_optimizer_steps_not_micro_batches():
    cfg = BatchingConfig(max_tokens=256, megabatch=4, seq_len_warmup_steps=10, seq_len_warmup_start=8)
    s = BatchStream(corpus(), cfg, pad_id=0, max_len=64, seed=3, batches_per_step=4)
    assert [s.current_max_len(k) for k in (0, 3, 4, 40)] == [8, 8, 13, 64]


def test_set_max_len_crops_later_batches():
    s = stream()
    s.set_max_len(5)
    assert all(next(s).input_ids.shape[1] <= 5 for _ in range(5))
    s.set_max_len(None)
    assert max(next(s).input_ids.shape[1] for _ in range(10)) > 5


def test_oversize_counters_and_errors():
    cfg = BatchingConfig(max_tokens=64, megabatch=2, oversize="reject")
    s = BatchStream([[1] * 10, [1] * 100, [1] * 30], cfg, pad_id=0, max_len=20, seed=0)
    assert s.counters["rejected"] == 2
    assert Counter(next(s).n_real for _ in range(3)) == Counter({10: 3})
    with pytest.raises(UserError, match="no sample fits"):
        next(BatchStream([[1] * 100], cfg, pad_id=0, max_len=20, seed=0))
    with pytest.raises(UserError, match="empty"):
        BatchStream([], cfg, pad_id=0, max_len=20, seed=0)
    truncating = BatchStream([[1] * 100], BatchingConfig(max_tokens=64), pad_id=0, max_len=20, seed=0)
    assert next(truncating).n_real == 20 and truncating.counters["truncated"] == 1


def test_length_histogram_is_reexported():
    assert sum(length_histogram([len(x) for x in corpus()], bins=5)["counts"]) == 120


# -- rank sharding ---------------------------------------------------------------------------

def batch_key(b) -> tuple:
    return (b.epoch, b.index)


@pytest.mark.parametrize("mode", ["bucket", "pack", "fixed"])
@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_disjoint_complete_and_in_lockstep(mode, world):
    cfg = BatchingConfig(max_tokens=256, mode=mode, batch_size=8, megabatch=4,
                         oversize="split" if mode == "pack" else "truncate")
    single = BatchStream(corpus(), cfg, pad_id=0, max_len=64, seed=3)
    steps = 2 * single.batches_per_epoch // world + 3  # crosses epoch boundaries
    reference = [next(single) for _ in range(steps * world)]
    ranks = [BatchStream(corpus(), cfg, pad_id=0, max_len=64, seed=3, rank=r, world_size=world) for r in range(world)]
    got = [[next(s) for _ in range(steps)] for s in ranks]
    keys = [batch_key(b) for per_rank in got for b in per_rank]
    assert len(set(keys)) == len(keys)  # disjoint
    assert set(keys) == {batch_key(b) for b in reference}  # complete: every batch of those epochs
    for r in range(world):
        for k, b in enumerate(got[r]):
            assert same(b, reference[k * world + r])
            assert mode == "fixed" or b.n_padded <= 256  # the same budget on every rank
    epoch0 = [b for per_rank in got for b in per_rank if b.epoch == 0]
    assert sum(b.n_real for b in epoch0) == sum(len(x) for x in corpus())


def test_rank_position_resumes_from_consumed_alone():
    cfg = BatchingConfig(max_tokens=256, megabatch=4)
    ranks = [BatchStream(corpus(), cfg, pad_id=0, max_len=64, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        for _ in range(17):
            next(s)
    state0 = ranks[0].state_dict()
    assert state0["consumed"] == 17 and state0["world_size"] == 2
    for r in range(2):  # rank 0's checkpoint resumes every rank
        resumed = BatchStream(corpus(), cfg, pad_id=0, max_len=64, seed=3, rank=r, world_size=2)
        resumed.load_state_dict(state0)
        assert same(next(resumed), next(ranks[r]))
    with pytest.raises(ValueError, match="rank must be in"):
        BatchStream(corpus(), cfg, pad_id=0, max_len=64, seed=3, rank=2, world_size=2)
    three = BatchStream(corpus(), cfg, pad_id=0, max_len=64, seed=3, rank=0, world_size=3)
    with pytest.raises(ValueError, match="data state of 2 ranks"):
        three.load_state_dict(state0)


def test_stream_reads_lengths_from_a_store_view_without_a_python_list(tmp_path):
    from tests.helpers import write_samples

    view = write_samples(tmp_path / "s", {"train": corpus()}).split("train")
    s = BatchStream(view, BatchingConfig(max_tokens=256, megabatch=4), pad_id=0, max_len=64, seed=3)
    assert s.lengths is view.lengths
    reference = stream()
    assert all(same(next(s), next(reference)) for _ in range(30))
