"""Post-training records: every format reads, encodes with the right loss mask, and every bad
line is one clear error naming file:line and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dswb.engine.data.records.chat import (DEFAULT_CHAT_TEMPLATE, END_TOKEN, encode_chat, encode_plain,
                                   install_chat_template, prompt_ids, stop_ids)
from dswb.engine.data.records.posttrain import (read_preferences, read_prompts, read_sft, split_records, task_preferences,
                                        task_prompts, task_sft)
from dswb.engine.data.records.task import AdditionTask
from dswb.engine.data.records.tokenizer import build_char_tokenizer, load_tokenizer
from dswb.errors import UserError

USER = {"role": "user", "content": "12+3="}
ASSISTANT = {"role": "assistant", "content": "015"}


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tok():
    return build_char_tokenizer("0123456789+=")


def test_sft_formats_read(tmp_path):
    plain = read_sft([str(write(tmp_path / "p.jsonl", [{"prompt": "1+1=", "completion": "002"}, ""]))])
    assert len(plain) == 1 and not plain[0].is_chat and plain[0].completion == "002"
    chat = read_sft([str(write(tmp_path / "c.jsonl", [{"messages": [USER, ASSISTANT]}]))])
    assert chat[0].is_chat and chat[0].conversation() == [USER, ASSISTANT] and chat[0].prompt == [USER]
    conv = read_sft([str(write(tmp_path / "v.jsonl", [{"prompt": [USER], "completion": [ASSISTANT]}]))])
    assert conv[0].conversation() == [USER, ASSISTANT]


def test_directories_are_read_recursively(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "a.jsonl", [{"prompt": "1+1=", "completion": "002"}])
    write(tmp_path / "sub" / "b.jsonl", [{"prompt": "2+2=", "completion": "004"}])
    assert [r.prompt for r in read_sft([str(tmp_path)])] == ["1+1=", "2+2="]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "1+1="}, "missing field 'completion'"),
    ({"completion": "2"}, "missing field 'prompt'"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"messages": [USER]}, "no assistant turn"),
    ({"messages": [{"role": "robot", "content": "x"}, ASSISTANT]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user"}]}, "messages[0] must be an object with string 'role' and 'content'"),
    ({"prompt": "1+1=", "completion": [ASSISTANT]}, "both be strings or both message lists"),
])
def test_bad_sft_lines_name_file_line_and_field(tmp_path, row, message):
    path = write(tmp_path / "bad.jsonl", [{"prompt": "0+0=", "completion": "000"}, row])
    with pytest.raises(UserError) as err:
        read_sft([str(path)])
    text = str(err.value)
    assert f"{path}:2" in text and message in text and "\n" not in text


def test_missing_empty_and_mixed_datasets(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        read_sft([str(tmp_path / "nope.jsonl")])
    with pytest.raises(UserError, match="no SFT records"):
        read_sft([str(write(tmp_path / "empty.jsonl", ["", "  "]))])
    mixed = write(tmp_path / "mixed.jsonl", [{"prompt": "1+1=", "completion": "002"}, {"messages": [USER, ASSISTANT]}])
    with pytest.raises(UserError, match="mixes plain and chat records"):
        read_sft([str(mixed)])


def test_preference_formats_and_errors(tmp_path):
    plain = read_preferences([str(write(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "002", "rejected": "003",
                                                                   "margin": 2}]))])
    assert plain[0].margin == 2.0 and plain[0].rejected == "003"
    implicit = read_preferences([str(write(tmp_path / "i.jsonl", [{"chosen": [USER, ASSISTANT],
                                                                      "rejected": [USER, {"role": "assistant", "content": "016"}]}]))])
    assert implicit[0].prompt == [USER] and implicit[0].chosen == [ASSISTANT]
    for row, message in [({"prompt": "1", "chosen": "2"}, "missing field 'rejected'"),
                         ({"prompt": "1", "chosen": "2", "rejected": "3", "margin": "big"}, "'margin' must be a number"),
                         ({"chosen": "2", "rejected": "3"}, "missing field 'prompt'"),
                         ({"prompt": "1", "chosen": "", "rejected": "3"}, "must not be empty")]:
        path = write(tmp_path / "bad.jsonl", [row])
        with pytest.raises(UserError, match=message):
            read_preferences([str(path)])


def test_prompt_records_keep_extra_fields(tmp_path):
    records = read_prompts([str(write(tmp_path / "r.jsonl", [{"prompt": "1+1=", "answer": "002", "level": 3}]))])
    assert records[0].fields == {"answer": "002", "level": 3}
    with pytest.raises(UserError, match=r"r2.jsonl:1: missing field 'prompt'"):
        read_prompts([str(write(tmp_path / "r2.jsonl", [{"question": "1+1="}]))])


def test_plain_encoding_masks_the_prompt(tok):
    ids, mask = encode_plain(tok, "12+3=", "015")
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:6]) == "12+3=" and mask == [0] * 6 + [1] * 4
    assert encode_plain(tok, "12+3=", "015", loss_on="all")[1] == [1] * 10


def test_chat_template_is_installed_saved_and_masks_assistant_turns(tok, tmp_path):
    assert install_chat_template(tok, "auto") is True
    ids, mask = encode_chat(tok, [USER, ASSISTANT, USER, ASSISTANT])
    tokens = tok.convert_ids_to_tokens(ids)
    learned = [t for t, m in zip(tokens, mask) if m]
    assert learned == ["0", "1", "5", END_TOKEN] * 2   # both assistant turns and their end tokens, nothing else
    assert prompt_ids(tok, [USER])[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert stop_ids(tok, "chat") == [tok.eos_token_id, tok.convert_tokens_to_ids(END_TOKEN)]
    tok.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.chat_template == DEFAULT_CHAT_TEMPLATE
    assert encode_chat(again, [USER, ASSISTANT]) == encode_chat(tok, [USER, ASSISTANT])
    assert install_chat_template(again, "auto") is False   # a tokenizer with a template keeps it


def test_custom_template_file_and_missing_file(tok, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    install_chat_template(tok, str(path))
    assert tok.chat_template.startswith("{% for m")
    with pytest.raises(UserError, match="cannot read chat template"):
        install_chat_template(tok, str(tmp_path / "missing.jinja"))


def test_task_provides_every_format_with_near_miss_negatives():
    task = AdditionTask(2, seed=0)
    splits = task.split(100, 10, 10)
    assert task_sft(splits.train)[0].completion == splits.train[0].answer
    assert task_sft(splits.train, chat=True)[0].is_chat
    prefs = task_preferences(task, splits.train, near_fraction=0.5, seed=0)
    kinds = {p.kind for p in prefs}
    assert kinds == {"near", "random"} and all(p.chosen != p.rejected for p in prefs)
    near = [p for p in prefs if p.kind == "near"]
    assert sum(a != b for a, b in zip(near[0].chosen, near[0].rejected)) <= 2
    assert task_prompts(splits.val)[0].fields == {"answer": splits.val[0].answer}


def test_split_records_is_seeded_and_disjoint():
    train, val = split_records(list(range(100)), 0.1, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == list(range(100))
    assert split_records(list(range(100)), 0.1, seed=3) == (train, val)
    assert split_records([1], 0.5, seed=0) == ([1], [])
