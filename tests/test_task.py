"""The built-in addition task (splits, formats, scoring) and greedy exact-match evaluation."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from dswb.engine.data.records.task import AdditionTask, score
from dswb.errors import UserError


def test_formats_are_zero_padded_and_fixed_length():
    task = AdditionTask(digits=2)
    e = task.example(7, 5)
    assert (e.prompt, e.answer, e.text) == ("07+05=", "012", "07+05=012")
    assert task.example(99, 99).answer == "198"
    assert AdditionTask(digits=3).example(1, 2).text == "001+002=0003"


def test_split_sizes_disjoint_and_deterministic():
    task = AdditionTask(digits=2, seed=3)
    s = task.split(900, 50, 50)
    assert (len(s.train), len(s.val), len(s.test)) == (900, 50, 50)
    keys = [(e.a, e.b) for e in s.train + s.val + s.test]
    assert len(set(keys)) == 1000
    assert all(e.answer == task.format_answer(e.a + e.b) for e in s.train)
    assert AdditionTask(2, seed=3).split(900, 50, 50) == s
    assert AdditionTask(2, seed=4).split(900, 50, 50).test != s.test


def test_test_and_val_do_not_depend_on_n_train():
    task = AdditionTask(digits=2, seed=0)
    a, b = task.split(100, 20, 30), task.split(5000, 20, 30)
    assert a.test == b.test and a.val == b.val
    assert b.train[:100] == a.train


def test_all_pairs_fit_and_one_more_is_an_error():
    task = AdditionTask(digits=1)
    s = task.split(80, 10, 10)
    assert len({(e.a, e.b) for e in s.train + s.val + s.test}) == 100
    with pytest.raises(UserError, match=r"task.n_train \+ task.n_val \+ task.n_test = 101 exceeds the 100"):
        task.split(81, 10, 10)


def test_large_digit_counts_use_sampling_without_replacement():
    task = AdditionTask(digits=4, seed=1)
    s = task.split(3000, 100, 100)
    keys = {(e.a, e.b) for e in s.train + s.val + s.test}
    assert len(keys) == 3200 and max(a for a, _ in keys) < 10_000
    assert task.split(10, 100, 100).test == s.test


def test_stage_formats():
    task = AdditionTask(digits=2)
    ex = task.split(3, 1, 1).train
    assert task.pretrain_texts(ex) == [e.prompt + e.answer for e in ex]
    assert task.sft_pairs(ex) == [(e.prompt, e.answer) for e in ex]
    assert task.rl_prompts(ex) == [(e.prompt, e.answer) for e in ex]


def test_preference_pairs_reject_a_wrong_answer_with_near_misses():
    task = AdditionTask(digits=2, seed=0)
    ex = task.split(400, 1, 1).train
    pairs = task.preference_pairs(ex, near_fraction=0.5)
    assert len(pairs) == 400
    kinds = {p.kind for p in pairs}
    assert kinds == {"near", "random"}
    for e, p in zip(ex, pairs):
        assert p.prompt == e.prompt and p.chosen == e.answer
        assert p.rejected != p.chosen and len(p.rejected) == 3 and p.rejected.isdigit()
        if p.kind == "near":
            assert int(p.rejected) in task.near_misses(e.a, e.b)
    assert task.preference_pairs(ex) == pairs  # deterministic


def test_near_misses():
    task = AdditionTask(digits=2)
    near = task.near_misses(37, 48)  # 85; no-carry sum 75; swaps: 805 ("085" -> "805"), 058
    assert {84, 86, 75, 95, 185, 805, 58} <= set(near)
    assert 85 not in near and all(0 <= n < 1000 for n in near)


def test_score_is_exact_but_tolerant_of_eos_and_space():
    assert score("085", "085")
    assert score(" 085 \n", "085")
    assert score("085<|eos|>", "085")
    assert score("085<|eos|>junk", "085")
    assert not score("85", "085")
    assert not score("0851", "085")
    assert not score("", "085")


# -- greedy evaluation on a tiny model -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dswb.engine.data.records.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      initializer_range=0.5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg), tok


def manual_greedy(model, tok, prompt, steps):
    """Unbatched, uncached reference: argmax one token at a time."""
    import torch

    ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    return tok.decode(new, skip_special_tokens=True)


def test_batched_left_padded_generation_matches_manual_greedy(tiny):
    from dswb.engine.eval.task import greedy_completions, task_accuracy

    model, tok = tiny
    model.train()
    prompts = ["1+2=", "37+48=", "123+4=", "9+99="]  # different lengths: real left padding
    ref = [manual_greedy(model, tok, p, 4) for p in prompts]
    assert greedy_completions(model, tok, prompts, "cpu", batch_size=3, max_new_tokens=4) == ref
    assert model.training  # mode restored
    answers = [ref[0], ref[1] + "0", ref[2], "xyz"]  # two right, two wrong
    assert task_accuracy(model, tok, prompts, answers, "cpu", batch_size=2, max_new_tokens=4) == 0.5
    assert task_accuracy(model, tok, [], [], "cpu") == 0.0
