"""Input formats: compressed JSONL, Parquet, `datasets` directories, globs; a bad record in each;
resuming the block stream at any block boundary; the hint when an optional package is missing."""

from __future__ import annotations

import gzip
import json
import sys

import pytest

from dswb.engine.data.corpus.blocks import parse_block
from dswb.engine.data.corpus.readers import iter_blocks, read_documents
from dswb.engine.data.corpus.sources import expand_paths
from dswb.errors import UserError

pa = pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is part of the test extra")
zstandard = pytest.importorskip("zstandard", reason="the zstd extra is part of the test extra")
import pyarrow.parquet as pq  # noqa: E402

DOCS = [f"document number {i}: " + "word " * (i % 7 + 1) for i in range(40)]


def jsonl_bytes(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def write_gz(path, data: bytes):
    with gzip.open(path, "wb") as f:
        f.write(data)
    return path


def write_zst(path, data: bytes):
    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    return path


@pytest.mark.parametrize("writer, suffix", [(write_gz, ".jsonl.gz"), (write_zst, ".jsonl.zst")])
def test_compressed_jsonl_reads_and_names_the_bad_line(tmp_path, writer, suffix):
    good = writer(tmp_path / f"good{suffix}", jsonl_bytes({"text": d} for d in DOCS))
    assert read_documents([str(good)]).docs == DOCS
    bad = writer(tmp_path / f"bad{suffix}", jsonl_bytes([{"text": "a"}, {"text": "b"}]) + b'{"text": oops}\n'
                 + jsonl_bytes([{"text": "c"}]))
    with pytest.raises(UserError, match=rf"bad{suffix.replace('.', '[.]')}:3: invalid JSON"):
        read_documents([str(bad)])
    skipped = read_documents([str(bad)], bad_lines="skip")
    assert skipped.docs == ["a", "b", "c"] and skipped.skipped == 1


def test_truncated_gzip_is_a_user_error(tmp_path):
    f = write_gz(tmp_path / "t.jsonl.gz", jsonl_bytes({"text": d} for d in DOCS * 50))
    f.write_bytes(f.read_bytes()[:-200])
    with pytest.raises(UserError, match="t.jsonl.gz: cannot read"):
        read_documents([str(f)])


def write_parquet(path, values, column="text"):
    pq.write_table(pa.table({column: values, "id": list(range(len(values)))}), path, row_group_size=7)
    return path


def test_parquet_reads_the_text_column_and_names_the_bad_row(tmp_path):
    good = write_parquet(tmp_path / "good.parquet", DOCS)
    assert read_documents([str(good)]).docs == DOCS
    bad = write_parquet(tmp_path / "bad.parquet", ["a", "b", None, "c"])
    with pytest.raises(UserError, match=r"bad.parquet: row 3: field 'text' is null"):
        read_documents([str(bad)])
    assert read_documents([str(bad)], bad_lines="skip").skipped == 1
    body = write_parquet(tmp_path / "body.parquet", ["x"], column="body")
    with pytest.raises(UserError, match=r"body.parquet: no column 'text' \(columns: body, id\)"):
        read_documents([str(body)])
    assert read_documents([str(body)], text_field="body").docs == ["x"]
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), ints)
    with pytest.raises(UserError, match="column 'text' is int64, not a string"):
        read_documents([str(ints)])
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="junk.parquet: not a readable Parquet file"):
        read_documents([str(tmp_path / "junk.parquet")])


def test_hf_datasets_save_to_disk_directories(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the hf-datasets extra writes the fixture")
    ds = datasets.Dataset.from_dict({"text": DOCS[:10] + [None] + DOCS[10:12], "n": list(range(13))})
    ds.save_to_disk(tmp_path / "ds")
    with pytest.raises(UserError, match=r"data-00000-of-00001.arrow: row 11: field 'text' is null"):
        read_documents([str(tmp_path / "ds")])
    assert read_documents([str(tmp_path / "ds")], bad_lines="skip").docs == DOCS[:12]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:5]}),
                               "test": datasets.Dataset.from_dict({"text": ["held out"]})})
    dd.save_to_disk(tmp_path / "dd")
    assert read_documents([str(tmp_path / "dd")]).docs == DOCS[:5]  # the train split
    (tmp_path / "tree").mkdir()
    ds.select(range(3)).save_to_disk(tmp_path / "tree" / "b_part")
    (tmp_path / "tree" / "a.txt").write_text("first")
    assert read_documents([str(tmp_path / "tree")]).docs == ["first"] + DOCS[:3]


def test_globs_sorted_and_no_match(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / name).write_text(json.dumps({"text": name}) + "\n")
    files = expand_paths([str(tmp_path / "*.jsonl")])
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(UserError, match=r"data.paths: no file matches .*\*.parquet"):
        expand_paths([str(tmp_path / "*.parquet")])


def test_missing_optional_package_gives_a_one_line_hint(tmp_path, monkeypatch):
    f = write_zst(tmp_path / "d.jsonl.zst", jsonl_bytes([{"text": "a"}]))
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(UserError, match=r"needs the 'zstandard' package: pip install 'dswb\[zstd\]'") as err:
        read_documents([str(f)])
    assert "\n" not in str(err.value)
    g = write_parquet(tmp_path / "d.parquet", ["a"])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UserError, match=r"pip install 'dswb\[parquet\]'"):
        read_documents([str(g)])


def all_texts(blocks) -> list[str]:
    return [t for b in blocks for t in parse_block(b, "text").texts]


@pytest.mark.parametrize("kind", ["jsonl", "gz", "zst", "parquet", "arrow", "json-array", "txt"])
def test_blocks_resume_at_every_block_boundary(tmp_path, kind):
    records = [{"text": d} for d in DOCS]
    if kind == "jsonl":
        (tmp_path / "d.jsonl").write_bytes(jsonl_bytes(records))
    elif kind == "gz":
        write_gz(tmp_path / "d.jsonl.gz", jsonl_bytes(records))
    elif kind == "zst":
        write_zst(tmp_path / "d.jsonl.zst", jsonl_bytes(records))
    elif kind == "parquet":
        write_parquet(tmp_path / "d.parquet", DOCS)
    elif kind == "arrow":
        with pa.ipc.new_stream(str(tmp_path / "d.arrow"), pa.schema([("text", pa.string())])) as w:
            for lo in range(0, len(DOCS), 6):
                w.write_batch(pa.record_batch([pa.array(DOCS[lo:lo + 6])], names=["text"]))
    elif kind == "json-array":
        (tmp_path / "d.json").write_text(json.dumps(records))
    else:
        for i, d in enumerate(DOCS[:5]):
            (tmp_path / f"{i}.txt").write_text(d)
    (tmp_path / "z_last.jsonl").write_bytes(jsonl_bytes([{"text": "the very end"}]))
    files = expand_paths([str(tmp_path)])
    blocks = list(iter_blocks(files, block_bytes=64))
    everything = all_texts(blocks)
    assert everything[-1] == "the very end" and len(blocks) > 2
    for k, block in enumerate(blocks):
        resumed = all_texts(iter_blocks(files, block_bytes=64, start=block.end))
        assert resumed == all_texts(blocks[k + 1:]), f"resuming after block {k}"
    assert sum(b.in_bytes for b in blocks) > 0
