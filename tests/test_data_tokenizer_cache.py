"""Tokenizers (BPE training, character vocabulary, loading) and the tokenized-data cache."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from dswb.engine.data.corpus import cache
from dswb.errors import UserError

CORPUS = [f"The quick brown fox {i} jumps over the lazy dog; naïve café #{i % 7}." for i in range(300)]


@pytest.fixture(scope="module")
def tok_mod():
    from dswb.engine.data.records import tokenizer
    return tokenizer


@pytest.fixture(scope="module")
def bpe(tok_mod):
    return tok_mod.train_bpe_tokenizer(CORPUS, 400)


def test_char_tokenizer_matches_the_task_format_and_round_trips(tok_mod, tmp_path):
    from transformers import AutoTokenizer

    tok = tok_mod.build_char_tokenizer("0123456789+=")
    assert len(tok) == 16  # pad, bos, eos, unk + 12 characters
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("37+48=085")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 10
    assert tok.decode(ids, skip_special_tokens=True) == "37+48=085"
    assert tok("3 x", add_special_tokens=False)["input_ids"] == [7, 3, 3]  # unknown chars -> unk
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert back("37+48=085")["input_ids"] == ids
    assert (back.bos_token, back.eos_token, back.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert back.decode(ids[1:] + [back.eos_token_id], skip_special_tokens=True) == "37+48=085"


def test_bpe_is_byte_level_bounded_and_round_trips(tok_mod, bpe, tmp_path):
    assert 259 < len(bpe) <= 400
    text = "Unseen ✓ text: 中文 and émojis 😀"
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == text  # byte-level: nothing is unknown
    assert bpe(text)["input_ids"] == [bpe.bos_token_id] + ids
    assert len(bpe("The quick brown fox", add_special_tokens=False)["input_ids"]) < 8  # merges learned
    bpe.save_pretrained(tmp_path)
    back = tok_mod.load_tokenizer(tmp_path)
    assert back(text)["input_ids"] == bpe(text)["input_ids"]
    assert back.pad_token_id == bpe.pad_token_id == 0
    assert tok_mod.tokenizer_identity(back) == tok_mod.tokenizer_identity(bpe)
    assert tok_mod.train_bpe_tokenizer(CORPUS, 400).get_vocab() == bpe.get_vocab()  # deterministic


def test_encode_batch_equals_one_at_a_time(tok_mod, bpe):
    texts = CORPUS[:20] + ["", "x"]
    assert tok_mod.encode_batch(bpe, texts) == [bpe.encode(t, add_special_tokens=False) for t in texts]


def test_load_tokenizer_errors_and_pad_fallback(tok_mod, bpe, tmp_path):
    with pytest.raises(UserError, match="model.tokenizer: no such tokenizer directory"):
        tok_mod.load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no tokenizer files"):
        tok_mod.load_tokenizer(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load tokenizer from"):
        tok_mod.load_tokenizer(broken)
    nopad = tmp_path / "nopad"
    bpe.save_pretrained(nopad)
    cfg = json.loads((nopad / "tokenizer_config.json").read_text())
    cfg.pop("pad_token")
    (nopad / "tokenizer_config.json").write_text(json.dumps(cfg))
    loaded = tok_mod.load_tokenizer(nopad)
    assert loaded.pad_token_id == loaded.eos_token_id


def test_identity_changes_with_the_vocabulary(tok_mod, bpe):
    assert tok_mod.tokenizer_identity(bpe) != tok_mod.tokenizer_identity(tok_mod.build_char_tokenizer())


# -- cache -----------------------------------------------------------------------------------

def test_load_or_build_miss_then_hit(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return [[1, 2, 3], [4], [5, 6]]

    parts = {"corpus": "abc", "chunk": 512}
    samples, hit = cache.load_or_build(parts, build, tmp_path)
    assert (samples, hit) == ([[1, 2, 3], [4], [5, 6]], False)
    samples, hit = cache.load_or_build(dict(reversed(parts.items())), build, tmp_path)  # key order irrelevant
    assert (samples, hit) == ([[1, 2, 3], [4], [5, 6]], True)
    assert len(calls) == 1
    _, hit = cache.load_or_build({**parts, "chunk": 256}, build, tmp_path)
    assert not hit and len(calls) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # no temp leftovers


def test_dtype_follows_the_largest_id(tmp_path):
    cache.load_or_build({"k": "small"}, lambda: [[0, 65535]], tmp_path)
    cache.load_or_build({"k": "big"}, lambda: [[0, 65536]], tmp_path)
    small = cache.entry_dir(tmp_path, cache.cache_key({"k": "small"})) / "samples.tokens.npy"
    big = cache.entry_dir(tmp_path, cache.cache_key({"k": "big"})) / "samples.tokens.npy"
    assert np.load(small).dtype == np.uint16 and np.load(big).dtype == np.int32
    assert cache.load_or_build({"k": "big"}, lambda: [], tmp_path) == ([[0, 65536]], True)


def test_empty_samples_round_trip(tmp_path):
    key = cache.cache_key({"e": 1})
    cache.save_entry(tmp_path, key, {"train": [[1]], "val": []})
    assert cache.load_entry(tmp_path, key).splits == {"train": [[1]], "val": []}


def test_damaged_entry_is_rebuilt(tmp_path):
    parts = {"k": 1}
    cache.load_or_build(parts, lambda: [[1, 2]], tmp_path)
    entry = cache.entry_dir(tmp_path, cache.cache_key(parts))
    (entry / "samples.offsets.npy").write_bytes(b"garbage")
    assert cache.load_or_build(parts, lambda: [[7]], tmp_path) == ([[7]], False)
    assert cache.load_or_build(parts, lambda: [[9]], tmp_path) == ([[7]], True)


def test_pickled_arrays_are_refused(tmp_path):
    key = cache.cache_key({"p": 1})
    entry = cache.save_entry(tmp_path, key, {"samples": [[1, 2]]})
    np.save(entry / "samples.tokens.npy", np.array([object(), object()], dtype=object), allow_pickle=True)
    assert cache.load_entry(tmp_path, key) is None


def test_file_identity_tracks_content_changes(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one")
    first = cache.file_identity(f)
    f.write_text("three")
    assert cache.file_identity(f) != first
    assert cache.texts_identity(["ab", "c"]) != cache.texts_identity(["a", "bc"])


def test_bench_paths_agree_on_a_small_corpus(tok_mod, bpe):
    from dswb.bench import data as bench
    from dswb.engine.data.corpus.cleaning import make_cleaner
    from dswb.engine.data.corpus.pipeline import chunk_plan

    docs = bench.synthetic_corpus(30_000, seed=2, median_words=60)
    serialized = tok_mod.tokenizer_json(bpe)
    r = bench._scenario(docs, lambda: tok_mod.tokenizer_from_json(serialized), make_cleaner(),
                        chunk_plan(32, 4, 8, 512, True), repeats=1)
    assert r["tokens_equal"] and r["samples"] > r["docs"]  # long documents were chunked
    assert set(r) >= {"one_by_one", "batched_1_thread", "batched_parallel"}
    assert "batched, parallel" in bench.format_table({"vocab": 1, "bpe_train_s": 0, "repeats": 1, "batch_size": 1000,
                                                     "env_parallelism": "unset", "scenarios": {"x": r}})
