"""Readers: text and JSONL files, directories, malformed lines, empty data, bad encodings."""

import json

import pytest

from dswb.engine.data.corpus.readers import read_documents
from dswb.errors import UserError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_text_file_is_one_document(tmp_path):
    f = write(tmp_path / "a.txt", "first paragraph\n\nsecond paragraph\r\n")
    result = read_documents([str(f)])
    assert result.docs == ["first paragraph\n\nsecond paragraph\n"]
    assert result.files == [str(f)]


def test_jsonl_lines_blank_lines_and_empty_texts(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"text": "one"}\n\n{"text": "two", "x": 1}\n{"text": ""}\n')
    assert read_documents([str(f)]).docs == ["one", "two"]


def test_custom_text_field_and_json_array(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"body": "a"}\n')
    g = write(tmp_path / "e.json", json.dumps([{"body": "b"}, {"body": "c"}]))
    assert read_documents([str(f), str(g)], text_field="body").docs == ["a", "b", "c"]


def test_directory_walk_is_recursive_sorted_and_filtered(tmp_path):
    write(tmp_path / "b" / "z.txt", "z")
    write(tmp_path / "a.jsonl", '{"text": "a"}\n')
    write(tmp_path / "c.txt", "c")
    write(tmp_path / "notes.csv", "ignored")
    write(tmp_path / ".hidden" / "h.txt", "hidden")
    result = read_documents([str(tmp_path)])
    assert result.docs == ["a", "c", "z"]
    assert [p.rsplit("/", 1)[-1] for p in result.files] == ["a.jsonl", "c.txt", "z.txt"]


def test_forced_format(tmp_path):
    f = write(tmp_path / "data.txt", '{"text": "x"}\n{"text": "y"}\n')
    assert read_documents([str(f)], fmt="jsonl").docs == ["x", "y"]
    assert read_documents([str(f)], fmt="text").docs == ['{"text": "x"}\n{"text": "y"}\n']


@pytest.mark.parametrize("line, what", [
    ('{"text": "ok"', "invalid JSON"),
    ('["text"]', "expected a JSON object"),
    ('{"other": "x"}', "missing field 'text'"),
    ('{"text": 3}', "field 'text' is int"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, what):
    f = write(tmp_path / "d.jsonl", '{"text": "fine"}\n' + line + "\n")
    with pytest.raises(UserError) as err:
        read_documents([str(f)])
    assert str(err.value).startswith(f"{f}:2: ")
    assert what in str(err.value)
    assert "\n" not in str(err.value)


def test_skip_mode_counts_bad_lines(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"text": "a"}\nnot json\n{"text": 1}\n{"text": "b"}\n')
    result = read_documents([str(f)], bad_lines="skip")
    assert result.docs == ["a", "b"]
    assert result.skipped == 2
    assert result.skipped_examples[0].startswith(f"{f}:2:")
    assert result.skipped_examples[1].startswith(f"{f}:3:")


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="no such file or directory: .*nope.txt"):
        read_documents([str(tmp_path / "nope.txt")])


@pytest.mark.parametrize("content", ["", "   \n\n", '{"text": ""}\n'])
def test_empty_dataset_is_an_error(tmp_path, content):
    f = write(tmp_path / ("d.jsonl" if "{" in content else "d.txt"), content)
    with pytest.raises(UserError, match="no documents in"):
        read_documents([str(f)])


def test_empty_directory_and_all_lines_skipped(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no documents in .*empty"):
        read_documents([str(tmp_path / "empty")])
    f = write(tmp_path / "d.jsonl", "bad\n")
    with pytest.raises(UserError, match=r"1 malformed lines skipped"):
        read_documents([str(f)], bad_lines="skip")


def test_non_utf8_text_names_file_and_line(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"fine\nstill fine\nbroken \xff here\n")
    with pytest.raises(UserError, match=r"bad.txt:3: not valid UTF-8 \(byte 0xff\)"):
        read_documents([str(f)])


def test_non_utf8_jsonl_line_is_a_bad_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'{"text": "a"}\n{"text": "\xc3("}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid UTF-8"):
        read_documents([str(f)])
    assert read_documents([str(f)], bad_lines="skip").skipped == 1


def test_utf8_bom_is_ignored(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes('\ufeff{"text": "héllo"}\n'.encode("utf-8"))
    assert read_documents([str(f)]).docs == ["héllo"]
