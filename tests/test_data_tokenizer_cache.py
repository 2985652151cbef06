"""Tokenizers (BPE training, character vocabulary, loading) and the tokenized-data cache."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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

def test_cache_key_ignores_key_order_and_follows_every_part():
    parts = {"corpus": "abc", "chunk": 512}
    assert cache.cache_key(parts) == cache.cache_key(dict(reversed(parts.items())))
    assert cache.cache_key(parts) != cache.cache_key({**parts, "chunk": 256})
    assert cache.entry_dir("/c", cache.cache_key(parts)).name == "tok-" + cache.cache_key(parts)


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
