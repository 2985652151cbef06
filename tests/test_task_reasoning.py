"""The built-in task with worked answers (`task.think`): the column steps, the tags as tokens of the
task's vocabulary, scoring of the answer part, the split seed apart from the run seed, and the
think/answer split every consumer shares."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from transformers import AutoTokenizer

from dswb.config.load import load_config
from dswb.engine.data.records.posttrain import task_prompts, task_sft
from dswb.engine.data.records.task import AdditionTask, column_steps, score, task_seed
from dswb.engine.data.records.thinking import split_thinking
from dswb.engine.data.records.tokenizer import build_char_tokenizer
from dswb.engine.eval.task import generation_budget


@pytest.mark.parametrize("a,b", [(457, 386), (999, 999), (0, 0), (105, 905), (12, 7)])
def test_column_steps_add_up_to_the_answer(a, b):
    steps = column_steps(a, b, 3).split(",")
    assert len(steps) == 3
    carry, digits = 0, []
    for k, step in enumerate(steps):
        left, total = step.split("=")
        terms = [int(t) for t in left.split("+")]
        assert terms[:2] == [a // 10**k % 10, b // 10**k % 10]
        assert terms[2:] == ([1] if carry else [])
        assert int(total) == sum(terms)
        carry, digits = int(total) // 10, digits + [int(total) % 10]
    assert int(str(carry) + "".join(map(str, reversed(digits)))) == a + b


def test_worked_completion_thinks_then_answers_and_the_plain_task_is_unchanged():
    task = AdditionTask(3, think=True)
    e = task.example(457, 386)
    assert (e.prompt, e.answer) == ("457+386=", "0843")
    assert e.completion == "<think>7+6=13,5+8+1=14,4+3+1=8</think>0843"
    assert e.text == e.prompt + e.completion
    plain = AdditionTask(3).example(457, 386)
    assert (plain.completion, plain.text) == ("0843", "457+386=0843")
    assert task.split(50, 5, 5).test == [task.example(x.a, x.b) for x in AdditionTask(3).split(50, 5, 5).test]


def test_records_of_every_stage_carry_the_worked_answer_and_the_plain_answer_to_score():
    task = AdditionTask(2, think=True)
    e = task.example(37, 48)
    assert task_sft([e])[0].completion == e.completion
    assert task_prompts([e])[0].fields == {"answer": "085"}
    pair = task.preference_pairs([e], seed=0)[0]
    assert pair.chosen == e.completion
    assert pair.rejected.startswith("<think>7+8=15,3+4+1=8</think>") and pair.rejected != pair.chosen


def test_tags_are_one_token_each_and_survive_decoding(tmp_path):
    task = AdditionTask(3, think=True)
    tok = build_char_tokenizer(task.alphabet, task.tags)
    e = task.example(457, 386)
    ids = tok(e.text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(e.text) - len("<think></think>") + 2
    assert tok.decode(ids, skip_special_tokens=True) == e.text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(e.text, add_special_tokens=False)["input_ids"] == ids
    assert generation_budget(tok, task) == len(tok(task.longest_completion(), add_special_tokens=False)["input_ids"]) + 5
    assert generation_budget(tok, AdditionTask(3)) is None


@pytest.mark.parametrize("completion,right", [
    ("<think>7+6=13,5+8+1=14,4+3+1=8</think>0843", True),
    ("<think>whatever</think> 0843 <|eos|>junk", True),
    ("0843", True),                      # a model that does not think is scored on its whole completion
    ("<think>7+6=13</think>0842", False),
    ("<think>7+6=13,0843", False),       # never closed: no answer
    ("</think>0843", True),              # started inside the thinking
])
def test_score_reads_the_answer_part(completion, right):
    assert score(completion, "0843") is right


@pytest.mark.parametrize("text,opened,think,answer", [
    ("<think>a</think>b", False, "a", "b"),
    ("a</think>b", True, "a", "b"),
    ("plain", False, None, "plain"),
    ("still thinking", True, "still thinking", ""),
    ("<think>x</think>y</think>z", False, "x</think>y", "z"),
])
def test_split_thinking(text, opened, think, answer):
    got = split_thinking(text, opened=opened)
    assert (got.think, got.answer) == (think, answer)


def test_task_seed_defaults_to_the_run_seed_and_can_be_held_fixed(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[run]\nseed = 3\n[data]\nsource = "task"\n')
    assert task_seed(load_config(preset)) == 3
    assert task_seed(load_config(preset, ["task.seed=0"])) == 0
