"""prepare_data end to end on tiny corpora: task and files sources, chunk policy, cache, errors."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from dswb.config import Config
from dswb.errors import UserError

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


@pytest.fixture(scope="module")
def prepare():
    from dswb.engine.data.corpus.pipeline import prepare_data
    return prepare_data


def task_config(**task):
    c = Config()
    c.task.n_train, c.task.n_val, c.task.n_test = 300, 40, 50
    for k, v in task.items():
        setattr(c.task, k, v)
    return c


def files_config(paths, **data):
    c = Config()
    c.data.source = "files"
    c.data.paths = [str(p) for p in paths]
    c.model.vocab_size = 300
    c.data.chunk_size, c.data.chunk_overlap, c.data.min_chunk = 64, 8, 16
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


def corpus(tmp_path, n=12):
    d = tmp_path / "corpus"
    d.mkdir()
    lines = [json.dumps({"text": f"<p>doc {i}: " + " ".join(WORDS[(i + j) % 11] for j in range(20 + 3 * i)) + "</p>"})
             for i in range(n)]
    (d / "a.jsonl").write_text("\n".join(lines) + "\n")
    (d / "b.txt").write_text("A plain text document. See http://example.com for more.\n\nSecond paragraph.")
    return d


def test_task_source(prepare, tmp_path):
    logs = []
    data = prepare(task_config(), tmp_path, logs.append)
    tok = data.tokenizer
    assert len(data.train) == 300 and len(data.val) == 40
    assert data.train[0][0] == tok.bos_token_id and data.train[0][-1] == tok.eos_token_id
    assert tok.decode(data.train[0], skip_special_tokens=True) == data.task_splits.train[0].text
    assert all(len(s) == 11 for s in data.train)  # bos + 9 characters + eos
    assert data.eval_prompts == [e.prompt for e in data.task_splits.val]
    assert data.test_answers == [e.answer for e in data.task_splits.test]
    assert data.stats["cache_hit"] is False and data.stats["tokens"] == 340 * 11
    assert logs and "340 documents" in logs[-1]
    again = prepare(task_config(), tmp_path)
    assert again.stats["cache_hit"] is True
    assert (again.train.tolist(), again.val.tolist()) == (data.train.tolist(), data.val.tolist())
    assert prepare(task_config(n_train=301), tmp_path).stats["cache_hit"] is False


def test_task_split_too_large_is_a_user_error(prepare, tmp_path):
    with pytest.raises(UserError, match="exceeds the 100 distinct pairs"):
        prepare(task_config(digits=1, n_train=90), tmp_path)


def test_files_source_trains_bpe_splits_and_caches(prepare, tmp_path):
    from transformers import AutoTokenizer

    d = corpus(tmp_path)
    cfg = files_config([d], val_fraction=0.2)
    data = prepare(cfg, tmp_path / "cache")
    tok = data.tokenizer
    s = data.stats
    assert s["documents"] == 13 and s["cache_hit"] is False and s["files"] == 2
    assert len(tok) <= 300 and data.val and data.train
    assert s["train_samples"] == len(data.train) and s["val_samples"] == len(data.val)
    text = tok.decode([t for t in data.train[0]], skip_special_tokens=True)
    assert "<p>" not in text and "http" not in text  # cleaned
    for sample in data.train.tolist() + data.val.tolist():
        assert len(sample) <= 64 and sample[0] == tok.bos_token_id
    tok.save_pretrained(tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)("beta")["input_ids"] == tok("beta")["input_ids"]

    again = prepare(cfg, tmp_path / "cache")
    assert again.stats["cache_hit"] is True
    assert (again.train.tolist(), again.val.tolist()) == (data.train.tolist(), data.val.tolist())
    assert again.tokenizer.get_vocab() == tok.get_vocab()
    again.tokenizer.save_pretrained(tmp_path / "tok2")  # the cached tokenizer is saveable too
    assert (tmp_path / "tok2" / "tokenizer.json").is_file()

    (d / "b.txt").write_text("changed text")
    assert prepare(cfg, tmp_path / "cache").stats["cache_hit"] is False


def test_long_documents_are_chunked_with_eos_only_at_the_end(prepare, tmp_path):
    d = corpus(tmp_path, n=2)
    (d / "long.txt").write_text(" ".join(f"w{i % 50}" for i in range(600)))
    data = prepare(files_config([d / "long.txt", d / "a.jsonl"], val_fraction=0.0, clean=False), tmp_path)
    tok = data.tokenizer
    train = data.train.tolist()
    eos = tok.eos_token_id
    long_samples = [s for s in train if tok.decode(s[1:4]).startswith("w0")]  # first chunk of long.txt
    assert len(long_samples) == 1
    first = train.index(long_samples[0])
    chunks = train[first:first + [i for i, s in enumerate(train[first:]) if s[-1] == eos][0] + 1]
    assert len(chunks) > 3
    assert all(len(c) <= 64 for c in chunks) and all(c[0] == tok.bos_token_id for c in chunks)
    assert [c[-1] == eos for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert tok.decode(chunks[-1], skip_special_tokens=True).endswith("w49")  # tail kept


def test_given_tokenizer_dir_is_used(prepare, tmp_path):
    from dswb.engine.data.records.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["some other corpus entirely"] * 20, 280)
    tok.save_pretrained(tmp_path / "tok")
    cfg = files_config([corpus(tmp_path)])
    cfg.model.tokenizer = str(tmp_path / "tok")
    data = prepare(cfg, tmp_path / "cache")
    assert data.tokenizer.get_vocab() == tok.get_vocab()
    cfg.model.tokenizer = str(tmp_path / "nope")
    with pytest.raises(UserError, match="model.tokenizer: no such tokenizer directory"):
        prepare(cfg, tmp_path / "cache")


def test_single_document_holds_out_its_last_chunks(prepare, tmp_path):
    f = tmp_path / "one.txt"
    f.write_text(" ".join(f"w{i % 30}" for i in range(800)))
    data = prepare(files_config([f], val_fraction=0.1), tmp_path)
    assert data.stats["documents"] == 1 and len(data.val) >= 1 and len(data.train) > len(data.val)
    assert data.val[len(data.val) - 1][-1] == data.tokenizer.eos_token_id


def test_bad_lines_error_or_skip(prepare, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "good document here"}\n{"txt": "wrong field"}\n{"text": "another good one"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: missing field 'text'"):
        prepare(files_config([f]), tmp_path)
    data = prepare(files_config([f], bad_lines="skip"), tmp_path)
    assert data.stats["skipped_lines"] == 1 and data.stats["documents"] == 2


def test_nothing_left_after_cleaning(prepare, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "<br/> https://x.y"}\n')
    with pytest.raises(UserError, match="no text left after cleaning"):
        prepare(files_config([f]), tmp_path)
