"""Bounded memory, measured in subprocesses: preparing and streaming an 8x larger corpus must not
need more memory (the old in-memory pipeline held ~60 bytes per token as Python lists: an 8 MB
corpus, ~2 M tokens, cost ~120 MB more than a 1 MB one). RSS growth is asserted, never time."""

from __future__ import annotations

import pytest

from dswb.bench import data as bench

pytestmark = pytest.mark.slow


def test_peak_rss_of_preparation_and_streaming_stays_flat_as_the_corpus_grows(tmp_path):
    tokenizer = bench.save_tokenizer(tmp_path / "tok")
    peaks = []
    for k, mb in enumerate((1, 8)):
        corpus = bench.write_corpus(tmp_path / f"c{k}.jsonl", mb, seed=k)
        overrides = bench.data_overrides(corpus["path"], tokenizer, str(tmp_path / f"cache{k}"), 1,
                                         "data.shard_mb=1", "batching.mode=pack", "batching.oversize=split")
        prep = bench._subprocess("prepare", {"overrides": overrides}, timeout=600)
        stream = bench._subprocess("first_batch", {"overrides": overrides, "batches": 200}, timeout=600)
        assert not prep["cache_hit"] and stream["cache_hit"]
        peaks.append((prep, stream))
    (small_prep, small_stream), (big_prep, big_stream) = peaks
    assert big_prep["tokens"] > 6 * small_prep["tokens"]
    assert big_prep["peak_rss_mb"] - small_prep["peak_rss_mb"] < 40, peaks
    assert big_stream["peak_rss_mb"] - small_stream["peak_rss_mb"] < 30, peaks
