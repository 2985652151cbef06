"""Batch planning (pure): the padded budget, coverage, determinism, oversize policies, packing."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest

from dswb.engine.data.batches.batching import (batch_stats, length_histogram, plan_bucketed, plan_fixed, plan_packed,
                                               plan_summary, row_fill, seq_len_at)


def lognormal_lengths(n: int, seed: int = 0, lo: int = 8, hi: int = 4096) -> list[int]:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(5.0, 0.8, n)), lo, hi).astype(int).tolist()


@pytest.mark.parametrize("max_tokens,max_len", [(8192, 2048), (1000, None), (64, 64), (37, 500)])
def test_bucketed_never_over_budget_never_empty_and_covers_every_sample(max_tokens, max_len):
    lengths = lognormal_lengths(3000, seed=max_tokens)
    plan = plan_bucketed(lengths, max_tokens, seed=1, epoch=0, megabatch=8, max_len=max_len)
    for i in range(len(plan)):
        batch_lengths = plan.batch_lengths(i)
        assert batch_lengths, "empty batch"
        assert len(batch_lengths) * max(batch_lengths) <= max_tokens
    seen = Counter(i for b in plan.batches for i in b)
    assert set(seen) == set(range(len(lengths))) and max(seen.values()) == 1
    cap = min(max_tokens, max_len or max_tokens)
    assert plan.truncated == sum(n > cap for n in lengths)
    assert plan.lengths.tolist() == [min(n, cap) for n in lengths]


def test_bucketed_reject_drops_and_counts_oversize():
    lengths = [5, 300, 40, 101, 100, 7]
    plan = plan_bucketed(lengths, max_tokens=100, seed=0, oversize="reject")
    kept = sorted(i for b in plan.batches for i in b)
    assert kept == [0, 2, 4, 5]
    assert plan.rejected == 2 and plan.truncated == 0
    assert plan.lengths[1] == 0 and plan.lengths[3] == 0


def test_single_sample_at_budget_is_its_own_batch_not_an_empty_one():
    # The blog's batcher returned [] when the first sample alone filled the budget.
    plan = plan_bucketed([100, 100, 1], max_tokens=100, seed=3)
    assert sorted(map(sorted, plan.batches)) == [[0], [1], [2]]


def test_empty_samples_are_dropped_and_counted():
    plan = plan_bucketed([0, 3, 0, 4], max_tokens=16)
    assert plan.empty == 2
    assert sorted(i for b in plan.batches for i in b) == [1, 3]


def test_bucketed_is_deterministic_per_seed_and_epoch():
    lengths = lognormal_lengths(2000)
    a = plan_bucketed(lengths, 4096, seed=7, epoch=2)
    b = plan_bucketed(lengths, 4096, seed=7, epoch=2)
    assert a.batches == b.batches
    assert plan_bucketed(lengths, 4096, seed=7, epoch=3).batches != a.batches
    assert plan_bucketed(lengths, 4096, seed=8, epoch=2).batches != a.batches


def test_bucketed_padding_efficiency_beats_fixed_batches():
    lengths = lognormal_lengths(10000)
    bucketed = plan_summary(plan_bucketed(lengths, 8192, seed=0, megabatch=64, max_len=2048), 8192)
    fixed = plan_summary(plan_fixed(lengths, 32, seed=0, max_len=2048), 8192)
    assert bucketed["efficiency"] >= 0.95
    assert bucketed["over_budget"] == 0
    assert fixed["efficiency"] < 0.6


def test_batch_stats():
    assert batch_stats([3, 5, 2]) == {"real": 10, "padded": 15, "efficiency": 10 / 15}
    assert batch_stats([])["efficiency"] == 0.0


def test_fixed_plan_has_fixed_sizes_and_crops_to_max_len():
    plan = plan_fixed([10, 20, 30, 40, 50], batch_size=2, seed=0, max_len=25)
    assert [len(b) for b in plan.batches] == [2, 2, 1]
    assert plan.lengths.tolist() == [10, 20, 25, 25, 25] and plan.truncated == 3
    assert sorted(i for b in plan.batches for i in b) == [0, 1, 2, 3, 4]


def _covered_tokens(plan) -> Counter:
    tokens: Counter = Counter()
    for batch in plan.batches:
        for row in batch:
            for i, s, e in row:
                tokens.update((i, t) for t in range(s, e))
    return tokens


def test_packed_split_covers_every_token_once_within_rows_and_budget():
    lengths = [3, 70, 17, 32, 1, 5, 64, 129, 9] * 20
    plan = plan_packed(lengths, max_tokens=128, seed=0, row_len=32, oversize="split", window=4)
    for batch in plan.batches:
        assert batch and len(batch) * plan.row_len <= 128
        assert all(0 < row_fill(row) <= 32 for row in batch)
    tokens = _covered_tokens(plan)
    assert max(tokens.values()) == 1
    assert len(tokens) == sum(lengths)
    assert plan.split == sum(n > 32 for n in lengths)


def test_packed_truncate_and_reject():
    lengths = [10, 50, 20]
    t = plan_packed(lengths, max_tokens=64, row_len=32, oversize="truncate")
    assert t.truncated == 1 and len(_covered_tokens(t)) == 10 + 32 + 20
    r = plan_packed(lengths, max_tokens=64, row_len=32, oversize="reject")
    assert r.rejected == 1 and {i for i, _ in _covered_tokens(r)} == {0, 2}


def test_packed_efficiency_and_determinism():
    lengths = lognormal_lengths(10000, hi=2048)
    plan = plan_packed(lengths, 8192, seed=0, epoch=0, row_len=2048)
    summary = plan_summary(plan, 8192)
    assert summary["efficiency"] >= 0.99 and summary["over_budget"] == 0
    assert plan_packed(lengths, 8192, seed=0, epoch=0, row_len=2048).batches == plan.batches
    assert plan_packed(lengths, 8192, seed=0, epoch=1, row_len=2048).batches != plan.batches


def test_seq_len_at_grows_linearly_then_stays():
    assert seq_len_at(0, 100, 64, 512) == 64
    assert seq_len_at(50, 100, 64, 512) == 288
    assert seq_len_at(100, 100, 64, 512) == 512
    assert seq_len_at(5, 0, 64, 512) == 512
    assert seq_len_at(0, 10, 1000, 512) == 512


def test_length_histogram():
    h = length_histogram([1, 2, 2, 3, 10], bins=3)
    assert len(h["edges"]) == 4 and sum(h["counts"]) == 5
    assert h["edges"][0] == 1.0 and h["edges"][-1] == 10.0
    assert length_histogram([]) == {"edges": [], "counts": []}


def test_planning_module_does_not_import_torch():
    import subprocess
    code = "import sys, dswb.engine.data.batches.batching; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_blog_sketch_batcher_reimplementation_keeps_its_defects():
    from dswb.bench.batching import blog_sketch_batches

    # Over budget when padded (2 x 90 > 100), and an empty batch when the first sample is too long.
    assert blog_sketch_batches([10, 90, 5], max_tokens=100) == [[10, 90], [5]]
    assert blog_sketch_batches([150, 20], max_tokens=100) == [[], [150], [20]]


def test_bench_quick_meets_the_goals():
    from dswb.bench.batching import format_table, run

    result = run(quick=True)
    for scenario in result["scenarios"]:
        rows = {r["batcher"].split(" (")[0]: r for r in scenario["rows"]}
        assert rows["dswb bucketed"]["efficiency"] >= 0.95
        assert rows["dswb packed"]["efficiency"] >= 0.99
        assert rows["dswb bucketed"]["over_budget"] == rows["dswb packed"]["over_budget"] == 0
        assert rows["blog sketch"]["over_budget"] > 0
    assert "dswb packed" in format_table(result)
