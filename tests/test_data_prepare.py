"""Streaming preparation of file corpora: dedup counts, the data report, progress events, and
resuming an interrupted preparation (read phase and tokenize phase) to the same store."""

from __future__ import annotations

import json
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from dswb.config import load_config
from dswb.engine.data.corpus import progress as progress_mod
from dswb.engine.data.corpus.dedup import HashSet64, NearDup, lsh_params
from dswb.engine.data.corpus.prepare import PreparationStopped, val_documents
from dswb.errors import UserError


@pytest.fixture(scope="module")
def prepare_data():
    from dswb.engine.data.corpus.pipeline import prepare_data
    return prepare_data


def unique_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{rng.randrange(10**6)}" for _ in range(3000)]
    return [f"doc {i} " + " ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) for i in range(n)]


def config(paths, *extra):
    return load_config(None, ["data.source=files", f"data.paths={json.dumps([str(p) for p in paths])}",
                              "model.vocab_size=300", "data.chunk_size=64", "data.chunk_overlap=8",
                              "data.min_chunk=16", "data.workers=1", *extra])


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_exact_duplicates_are_counted_and_removed(prepare_data, tmp_path):
    docs = unique_docs(60)
    # 15 planted copies: 10 verbatim, 5 that differ only in what cleaning removes (HTML, spaces)
    planted = docs[:10] + [f"<p>{d}</p>  " for d in docs[20:25]]
    corpus = docs[:30] + planted + docs[30:]
    f = write_jsonl(tmp_path / "c.jsonl", corpus)
    data = prepare_data(config([f]), tmp_path / "cache")
    r = data.report
    assert (r["records"], r["exact_duplicates"], r["documents"]) == (75, 15, 60)
    assert data.stats["duplicates"] == 15
    clean = prepare_data(config([write_jsonl(tmp_path / "u.jsonl", docs)]), tmp_path / "cache")
    assert data.train.tolist() == clean.train.tolist() and data.val.tolist() == clean.val.tolist()
    off = prepare_data(config([f], "data.dedup=false"), tmp_path / "cache")
    assert off.report["exact_duplicates"] == 0 and off.report["documents"] == 75


def test_near_duplicates_are_an_option(prepare_data, tmp_path):
    docs = unique_docs(40, seed=1)
    edited = [d.replace(" w", " W", 1) + " extra" for d in docs[:8]]  # one changed word and one added
    f = write_jsonl(tmp_path / "c.jsonl", docs + edited)
    exact_only = prepare_data(config([f]), tmp_path / "cache")
    assert exact_only.report["exact_duplicates"] == 0 and exact_only.report["near_duplicates"] == 0
    near = prepare_data(config([f], "data.near_dedup=true"), tmp_path / "cache")
    assert near.report["near_duplicates"] == 8 and near.report["documents"] == 40


def test_minhash_lsh_parts():
    bands, rows = lsh_params(0.8, 128)
    assert bands * rows <= 128 and 0.6 < (1 / bands) ** (1 / rows) < 0.9  # the S-curve's midpoint
    nd = NearDup(0.8, 128)
    base = " ".join(f"word{i}" for i in range(300))
    assert (nd.keys(base) == nd.keys(base.replace("word5 ", "other "))).any()
    assert not (nd.keys(base) == nd.keys(" ".join(f"term{i}" for i in range(300)))).any()
    seen = HashSet64()
    for start in range(0, 1000, 100):
        seen.add(np.arange(start, start + 150, dtype=np.uint64) * 7)
    probe = np.array([0, 7, 8, 7 * 1049, 7 * 1050], dtype=np.uint64)
    assert seen.contains(probe).tolist() == [True, True, False, True, False]
    assert len(seen.runs) <= 5


def test_val_documents_match_the_list_based_split():
    from dswb.engine.data.corpus.pipeline import split_documents

    for n, frac, seed in [(2, 0.05, 0), (13, 0.2, 1), (1000, 0.01, 7), (57, 0.5, 3)]:
        assert val_documents(n, frac, seed).tolist() == split_documents(n, frac, seed)[1]
    assert len(val_documents(1, 0.5, 0)) == 0 and len(val_documents(10, 0.0, 0)) == 0


def test_report_progress_events_and_no_leftovers(prepare_data, tmp_path, monkeypatch):
    monkeypatch.setattr(progress_mod, "PROGRESS_EVERY_S", 0.0)
    f = write_jsonl(tmp_path / "c.jsonl", unique_docs(200) + ["   ", '<br/>'])
    events = []
    data = prepare_data(config([f], "data.shard_mb=0.005"), tmp_path / "cache", progress=events.append)
    r = data.report
    assert r["records"] == 202 and r["empty"] == 1 and r["cleaned_away"] == 1 and r["documents"] == 200
    assert r["train_documents"] + r["val_documents"] == 200 and r["val_documents"] == 10
    assert r["chunks"] == r["train_samples"] + r["val_samples"] == len(data.train) + len(data.val)
    assert r["tokens"] == int(data.store.lengths.sum()) and r["train_tokens"] == int(data.train.lengths.sum())
    assert sum(r["length_hist"]["counts"]) == len(data.train)
    assert r["bytes_per_token"] == pytest.approx(r["text_mb"] * 1e6 / r["doc_tokens"], rel=1e-2)
    assert r["shards"] > 3 and r["tokens_per_doc"]["max"] >= r["tokens_per_doc"]["p50"] > 0
    phases = [e["phase"] for e in events]
    assert phases[0] == "read" and "tokenizer" in phases and phases[-1] == "tokenize"
    reads = [e for e in events if e["phase"] == "read"]
    assert reads[-1]["fraction"] == 1.0 and reads[-1]["documents"] == 200
    assert [e["documents"] for e in reads] == sorted(e["documents"] for e in reads)
    assert events[-1]["tokens"] == r["tokens"] and events[-1]["eta_s"] == 0
    cache = tmp_path / "cache"
    key = data.stats["cache_key"]
    assert sorted(p.name for p in cache.iterdir()) == [f".tmp-{key}.lock", f"tok-{key}"]  # no temp dir
    entry = cache / f"tok-{data.stats['cache_key']}"
    assert not list(entry.glob("text-*")) and not (entry / "progress.json").exists()


def stop_when(predicate):
    def on_progress(event):
        if predicate(event):
            raise PreparationStopped("test")
    return on_progress


@pytest.mark.parametrize("where", ["read", "tokenize"])
def test_interrupted_preparation_resumes_from_its_last_complete_shard(prepare_data, tmp_path, monkeypatch, where):
    monkeypatch.setattr(progress_mod, "PROGRESS_EVERY_S", 0.0)
    f = write_jsonl(tmp_path / "c.jsonl", unique_docs(300) + unique_docs(20)[:5])  # 5 duplicates
    cfg = config([f], "data.shard_mb=0.004")
    reference = prepare_data(cfg, tmp_path / "reference")
    if where == "read":
        stop = stop_when(lambda e: e["phase"] == "read" and e.get("shards", 0) >= 3)
    else:
        stop = stop_when(lambda e: e["phase"] == "tokenize" and e["fraction"] > 0.3)
    with pytest.raises(PreparationStopped):
        prepare_data(cfg, tmp_path / "cache", progress=stop)
    tmp = tmp_path / "cache" / f".tmp-{reference.stats['cache_key']}"
    assert (tmp / "progress.json").exists()
    done_before = sorted(p.name for p in tmp.glob("s*.done.json"))
    logs = []
    resumed = prepare_data(cfg, tmp_path / "cache", logs.append)
    assert any("resuming an interrupted preparation" in m for m in logs)
    assert resumed.report["resumed_shards"] >= 3
    if where == "tokenize":
        assert done_before  # some token shards were complete and kept
    assert resumed.train.tolist() == reference.train.tolist() and resumed.val.tolist() == reference.val.tolist()
    for k in ("records", "documents", "exact_duplicates", "tokens", "chunks"):
        assert resumed.report[k] == reference.report[k], k
    assert resumed.report["exact_duplicates"] == 5
    assert not tmp.exists()


def test_changed_settings_do_not_resume_a_stale_preparation(prepare_data, tmp_path, monkeypatch):
    monkeypatch.setattr(progress_mod, "PROGRESS_EVERY_S", 0.0)
    f = write_jsonl(tmp_path / "c.jsonl", unique_docs(200))
    with pytest.raises(PreparationStopped):
        prepare_data(config([f], "data.shard_mb=0.004"), tmp_path / "cache",
                     progress=stop_when(lambda e: e.get("shards", 0) >= 2))
    logs = []
    prepare_data(config([f], "data.shard_mb=0.004", "data.val_fraction=0.1"), tmp_path / "cache", logs.append)
    assert not any("resuming" in m for m in logs)  # another key: a fresh preparation


def test_bad_record_in_a_later_block_and_empty_corpora(prepare_data, tmp_path):
    docs = unique_docs(100)
    lines = [json.dumps({"text": d}) for d in docs]
    lines.insert(80, '{"text": 12}')
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"c.jsonl:81: field 'text' is int, not a string"):
        prepare_data(config([f], "data.shard_mb=0.004", "data.workers=2"), tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # nothing left to resume
    skipped = prepare_data(config([f], "data.bad_lines=skip"), tmp_path / "cache")
    assert skipped.report["bad_records"] == 1 and skipped.stats["skipped_lines"] == 1
    assert skipped.report["bad_examples"][0].endswith("c.jsonl:81: field 'text' is int, not a string")
    blank = write_jsonl(tmp_path / "blank.jsonl", ["  ", ""])
    with pytest.raises(UserError, match="no documents in"):
        prepare_data(config([blank]), tmp_path / "cache")
    tags = write_jsonl(tmp_path / "tags.jsonl", ["<br/> https://x.y", "<p></p>"])
    with pytest.raises(UserError, match="no text left after cleaning"):
        prepare_data(config([tags]), tmp_path / "cache")


def test_parquet_corpus_end_to_end(prepare_data, tmp_path):
    pa = pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is part of the test extra")
    import pyarrow.parquet as pq

    docs = unique_docs(50, seed=3)
    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet", row_group_size=10)
    from_parquet = prepare_data(config([tmp_path / "c.parquet"]), tmp_path / "cache")
    from_jsonl = prepare_data(config([write_jsonl(tmp_path / "c.jsonl", docs)]), tmp_path / "cache")
    assert from_parquet.train.tolist() == from_jsonl.train.tolist()
    assert from_parquet.report["records"] == 50


def test_worker_modules_stay_light():
    """Spawned workers import these: no torch, no transformers (seconds of start-up each)."""
    import subprocess
    import sys

    code = ("import sys, dswb.engine.data.corpus.work, dswb.engine.data.corpus.prepare, dswb.engine.data.corpus.store; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
