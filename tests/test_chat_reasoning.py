"""Think/answer formats end to end: records with `reasoning_content`, templates that keep or drop
earlier thinking (Qwen3's copy in tests/data), assistant loss masks found in the whole render, the
tags surviving tokenization, and generation prompts that open the thinking (DeepSeek-R1's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dswb.engine.data.records.chat import encode_chat, encode_plain, install_chat_template, prompt_ids
from dswb.engine.data.records.posttrain import read_sft
from dswb.engine.data.records.tokenizer import train_bpe_tokenizer
from dswb.errors import UserError

QWEN3 = Path(__file__).parent / "data" / "qwen3_chat_template.jinja"
OLD_DEFAULT = ("{{ bos_token }}"
               "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
R1_STYLE = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}"
            "{% elif m.role == 'assistant' %}<｜Assistant｜>{% if m.reasoning_content is string %}"
            "<think>\n{{ m.reasoning_content }}\n</think>\n\n{% endif %}{{ m.content }}<｜end▁of▁sentence｜>"
            "{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}")

CHAT = [{"role": "user", "content": "What is 12+3?"},
        {"role": "assistant", "reasoning_content": "12 plus 3 is 15.", "content": "15"},
        {"role": "user", "content": "And 15+5?"},
        {"role": "assistant", "reasoning_content": "15 plus 5 is 20.", "content": "20"}]


def bpe(special_tags: bool = False):
    """A byte-level BPE with Qwen3's turn markers as special tokens and the think tags as added tokens."""
    tok = train_bpe_tokenizer(["What is 12+3? And 15+5? 12 plus 3 is 15. 15 plus 5 is 20. answer"] * 20, 300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<｜User｜>", "<｜Assistant｜>",
                                                          "<｜end▁of▁sentence｜>"]}, replace_extra_special_tokens=False)
    if special_tags:
        tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]},
                               replace_extra_special_tokens=False)
    else:
        tok.add_tokens(["<think>", "</think>"])   # as in Qwen3: added tokens, not special ones
    return tok


def learned(tok, ids: list[int], mask: list[int]) -> list[str]:
    """The text of each run of masked tokens."""
    runs, run = [], []
    for i, m in zip(ids, mask):
        if m:
            run.append(i)
        elif run:
            runs, run = runs + [tok.decode(run)], []
    return runs + ([tok.decode(run)] if run else [])


def prefix_mask(tok, messages) -> list[int]:
    """The old method: turn i spans the tokens between the renders of messages[:i] (+ generation prompt)
    and messages[:i + 1]. Wrong when the history drops earlier thinking."""
    def n(msgs, gen=False):
        return len(tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen),
                       add_special_tokens=False)["input_ids"])
    full = n(messages)
    mask = [0] * full
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            for j in range(n(messages[:i], True), min(n(messages[:i + 1]), full)):
                mask[j] = 1
    return mask


def test_records_with_reasoning_read_and_bad_reasoning_names_file_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps({"messages": CHAT[:2]}) + "\n")
    assert read_sft([str(path)])[0].conversation() == CHAT
    for bad, message in [({"role": "user", "content": "hi", "reasoning_content": "x"}, "only for assistant"),
                         ({"role": "assistant", "content": "hi", "reasoning_content": 3}, "must be a string")]:
        path.write_text(json.dumps({"messages": CHAT[:2]}) + "\n" + json.dumps({"messages": [CHAT[0], bad]}) + "\n")
        with pytest.raises(UserError) as err:
            read_sft([str(path)])
        assert f"{path}:2: messages[1]: 'reasoning_content'" in str(err.value) and message in str(err.value)


def test_default_template_writes_reasoning_and_is_unchanged_without_it():
    tok = bpe()
    install_chat_template(tok, "default")
    plain = [{"role": "system", "content": "Be brief."}, CHAT[0], {"role": "assistant", "content": "15"}]
    for gen in (False, True):
        old = tok.apply_chat_template(plain, tokenize=False, add_generation_prompt=gen, chat_template=OLD_DEFAULT)
        assert tok.apply_chat_template(plain, tokenize=False, add_generation_prompt=gen) == old
    assert tok.apply_chat_template(CHAT[:2], tokenize=False).endswith(
        "<|assistant|><think>12 plus 3 is 15.</think>15<|end|>")


def test_qwen3_template_masks_what_the_whole_conversation_keeps():
    tok = bpe()
    install_chat_template(tok, str(QWEN3))
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert text == ("<|im_start|>user\nWhat is 12+3?<|im_end|>\n<|im_start|>assistant\n15<|im_end|>\n"
                    "<|im_start|>user\nAnd 15+5?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n15 plus 5 is 20.\n</think>\n\n20<|im_end|>\n")
    ids, mask = encode_chat(tok, CHAT)
    assert learned(tok, ids, mask) == ["15<|im_end|>\n", "<think>\n15 plus 5 is 20.\n</think>\n\n20<|im_end|>\n"]
    # The old prefix method: turn 1 rendered last keeps its thinking, so its span was that many tokens
    # too long and ran into the next user turn.
    old = learned(tok, ids, prefix_mask(tok, CHAT))
    assert old[0].startswith("15<|im_end|>\n<|im_start|>user\nAnd") and old[0] != "15<|im_end|>\n"


def test_default_template_masks_reasoning_of_every_turn():
    tok = bpe()
    install_chat_template(tok, "default")
    ids, mask = encode_chat(tok, CHAT)
    assert learned(tok, ids, mask) == ["<think>12 plus 3 is 15.</think>15<|end|>",
                                       "<think>15 plus 5 is 20.</think>20<|end|>"]
    assert encode_chat(tok, CHAT, loss_on="all")[1] == [1] * len(ids)


def test_think_tags_in_a_completion_round_trip():
    completion = "<think>\n12 plus 3 is 15.\n</think>\n\n15"
    tok = bpe()
    ids, mask = encode_plain(tok, "What is 12+3?", completion)
    answer = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(answer, skip_special_tokens=True) == completion
    assert tok.convert_tokens_to_ids("<think>") in answer
    install_chat_template(tok, str(QWEN3))
    ids, mask = encode_chat(tok, [CHAT[0], {"role": "assistant", "content": completion}])
    assert learned(tok, ids, mask) == [completion + "<|im_end|>\n"]
    special = bpe(special_tags=True)   # why the tags must not be special tokens: decoding drops them
    ids, mask = encode_plain(special, "What is 12+3?", completion)
    assert special.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True) == "\n12 plus 3 is 15.\n\n\n15"


def test_template_that_renders_no_assistant_turn_is_an_error(tmp_path):
    tok = bpe()
    skip = tmp_path / "skip.jinja"
    skip.write_text("{% for m in messages %}{% if m.role != 'assistant' %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                    "<|im_end|>\n{% endif %}{% endfor %}")
    install_chat_template(tok, str(skip))
    with pytest.raises(UserError) as err:
        encode_chat(tok, CHAT, where="chat.jsonl:3")
    text = str(err.value)
    assert text.startswith("chat.jsonl:3: chat template ") and str(skip) in text and "messages[1]" in text
    assert "\n" not in text
    with_prompt = tmp_path / "prompt.jinja"
    with_prompt.write_text(skip.read_text() + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    install_chat_template(tok, str(with_prompt))
    with pytest.raises(UserError, match=r"chat.jsonl:3: chat template .*prompt.jinja: the render of messages\[:1\]"):
        encode_chat(tok, CHAT, where="chat.jsonl:3")
    bare = tmp_path / "bare.jinja"
    bare.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    install_chat_template(tok, str(bare))
    with pytest.raises(UserError, match=r"^chat.jsonl:3: chat template .*bare.jinja marks no assistant token"):
        encode_chat(tok, [CHAT[0], {"role": "assistant", "content": ""}], where="chat.jsonl:3")


def test_generation_prompt_that_opens_the_thinking():
    tok = bpe()
    tok.chat_template = R1_STYLE
    think = tok("<think>\n", add_special_tokens=False)["input_ids"]
    ids = prompt_ids(tok, [CHAT[0]])
    assert ids[-len(think):] == think and tok.decode(ids).endswith("<｜Assistant｜><think>\n")
    ids, mask = encode_chat(tok, CHAT[:2])
    assert learned(tok, ids, mask) == ["12 plus 3 is 15.\n</think>\n\n15<｜end▁of▁sentence｜>"]
    with pytest.raises(UserError, match=r"^chat record: the tokenizer's own chat template: the render"):
        encode_chat(tok, [CHAT[0], {"role": "assistant", "content": "15"}])   # no tag where the prompt opens one

