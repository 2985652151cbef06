"""Equality with the samples of the in-memory pipeline that preceded the on-disk store.

`tests/fixtures/data_golden.json` was recorded with the old pipeline (samples as Python lists,
`random.shuffle` split, list-based batch planning) on the corpora below; the store, the
streaming preparation (with 1 and 2 workers, small shards) and the numpy planners must give the
same tokens, the same chunks, the same train/val split and the same batch order for a seed.
Dedup is on (the default): these corpora have no duplicate documents.

Re-record (only when a change of samples is intended): `python tests/test_data_equality.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

GOLDEN = Path(__file__).parent / "fixtures" / "data_golden.json"
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qu", "an", "el", "or", "is", "th", "ing"]
EXTRAS = ["<p>", "</p>", '<a href="https://example.org/x">', "</a>", "<br/>", "https://example.com/p?id=4",
          "www.example.net/path", "\U0001F600", "深度求索", "€5", "a+b=c"]


def prose(n_docs: int, seed: int, median_words: float) -> list[str]:
    """Distinct prose-like documents (no two equal), seeded."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(800)]
    docs = []
    for d in range(n_docs):
        n = max(3, int(rng.lognormvariate(__import__("math").log(median_words), 0.9)))
        parts = [f"Doc{seed}x{d}"]
        for _ in range(n):
            r = rng.random()
            parts.append(rng.choice(EXTRAS) if r < 0.03 else rng.choice(vocab))
            if rng.random() < 0.08:
                parts[-1] += rng.choice([".", ",", ";", "!"])
            if rng.random() < 0.01:
                parts[-1] += "\n\n"
        docs.append(" ".join(parts))
    return docs


def write_corpora(root: Path) -> dict[str, Path]:
    """The corpora of the golden cases, written under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    small = root / "small"
    small.mkdir(exist_ok=True)
    lines = [json.dumps({"text": f"<p>doc {i}: " + " ".join(WORDS[(i + j) % 11] for j in range(20 + 3 * i)) + "</p>"})
             for i in range(12)]
    (small / "a.jsonl").write_text("\n".join(lines) + "\n")
    (small / "b.txt").write_text("A plain text document. See http://example.com for more.\n\nSecond paragraph.")
    prose_dir = root / "prose"
    prose_dir.mkdir(exist_ok=True)
    (prose_dir / "long.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in prose(120, 0, 250)))
    (prose_dir / "short.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in prose(400, 1, 25)))
    (prose_dir / "notes.txt").write_text("\n".join(prose(3, 2, 80)))
    one = root / "one.txt"
    one.write_text(" ".join(f"w{i % 30}" for i in range(800)))
    return {"small": small, "prose": prose_dir, "one": one}


def cases(paths: dict[str, Path]) -> dict[str, list[str]]:
    """Config overrides of each golden case."""
    files = ["data.source=files", "model.max_seq_len=512"]
    return {
        "task": ["data.source=task", "task.n_train=300", "task.n_val=40", "task.n_test=50", "model.max_seq_len=64"],
        "task-seed5": ["data.source=task", "task.n_train=200", "task.n_val=30", "task.n_test=20", "run.seed=5",
                       "model.max_seq_len=64"],
        "small": files + [f"data.paths=['{paths['small']}']", "model.vocab_size=300", "data.chunk_size=64",
                          "data.chunk_overlap=8", "data.min_chunk=16", "data.val_fraction=0.2"],
        "prose": files + [f"data.paths=['{paths['prose']}']", "model.vocab_size=600", "data.chunk_size=64",
                          "data.chunk_overlap=8", "data.min_chunk=16", "data.val_fraction=0.05", "run.seed=3"],
        "prose-raw": files + [f"data.paths=['{paths['prose']}/long.jsonl', '{paths['prose']}/notes.txt']",
                              "model.vocab_size=400", "data.chunk_size=128", "data.chunk_overlap=16",
                              "data.min_chunk=32", "data.val_fraction=0.0", "data.clean=false"],
        "one": files + [f"data.paths=['{paths['one']}']", "model.vocab_size=300", "data.chunk_size=64",
                        "data.chunk_overlap=8", "data.min_chunk=16", "data.val_fraction=0.1"],
    }


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()


def as_lists(samples) -> list[list[int]]:
    return [[int(t) for t in s] for s in samples]


def batch_digest(batches) -> str:
    h = hashlib.sha256()
    for b in batches:
        for t in (b.input_ids, b.labels, b.attention_mask, b.position_ids):
            h.update(b"-" if t is None else t.numpy().tobytes())
    return h.hexdigest()


def observe(data, config) -> dict:
    """What the golden file records of one prepared dataset."""
    from dswb.config.schema import BatchingConfig
    from dswb.engine.eval.loss import validation_batches
    from dswb.engine.data.batches.loader import BatchStream

    train, val = as_lists(data.train), as_lists(data.val)
    out = {"train": digest(train), "val": digest(val), "n_train": len(train), "n_val": len(val),
           "tokens": sum(map(len, train)) + sum(map(len, val)), "vocab": len(data.tokenizer)}
    pad = data.tokenizer.pad_token_id
    for mode in ("bucket", "pack", "fixed"):
        cfg = BatchingConfig(max_tokens=512, mode=mode, batch_size=8, megabatch=4,
                             oversize="split" if mode == "pack" else "truncate")
        stream = BatchStream(data.train, cfg, pad_id=pad, max_len=config.model.max_seq_len, seed=7)
        out[f"batches-{mode}"] = batch_digest([next(stream) for _ in range(25)])
    out["val-batches"] = batch_digest(validation_batches(data.val, config, pad))
    return out


def record(root: Path) -> dict:
    from dswb.config import load_config
    from dswb.engine.data.corpus.pipeline import prepare_data

    paths = write_corpora(root / "corpora")
    result = {}
    for name, overrides in cases(paths).items():
        config = load_config(None, overrides)
        result[name] = observe(prepare_data(config, root / "cache"), config)
    return result


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    return write_corpora(tmp_path_factory.mktemp("golden") / "corpora")


@pytest.mark.parametrize("name, workers", [("task", 1), ("task-seed5", 1), ("small", 1), ("prose", 1),
                                           ("prose-raw", 1), ("one", 1), ("small", 2), ("prose", 2), ("one", 2)])
def test_same_samples_split_and_batches_as_the_in_memory_pipeline(golden, corpora, tmp_path, name, workers):
    """Files are prepared in 10 KB shards (many shards, several blocks each) by 1 or 2 workers."""
    from dswb.config import load_config
    from dswb.engine.data.corpus.pipeline import prepare_data

    overrides = cases(corpora)[name] + [f"data.workers={workers}", "data.shard_mb=0.01"]
    config = load_config(None, overrides)
    data = prepare_data(config, tmp_path / "cache")
    if name == "prose":
        assert data.report["shards"] > 10
    assert observe(data, config) == golden[name]
    again = prepare_data(config, tmp_path / "cache")  # from the store (cache hit)
    assert again.stats["cache_hit"] and observe(again, config) == golden[name]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        recorded = record(Path(tmp))
    GOLDEN.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
