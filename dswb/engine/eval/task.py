"""Exact-match accuracy of a causal LM on the built-in task, by greedy generation (the answer part,
after `</think>`, of a model that thinks).

Prompts are encoded as `[bos] + prompt` (the training format; no special tokens from the
tokenizer itself), or as a user turn of the chat template for a model trained on chats
(`prompt_format="chat"`, stopping at the end-of-turn token too), left-padded into batches, and completed with `model.generate` (KV cache on,
`do_sample=False`). A completion is decoded without special tokens and scored by
`dswb.engine.data.records.task.score`. The model is put in eval mode and its previous mode restored.
"""

from __future__ import annotations

from typing import Any

import torch

from dswb.engine.data.batches.collate import left_pad
from dswb.engine.data.records.task import score


def encode_prompts(tokenizer: Any, prompts: list[str], prompt_format: str = "plain") -> list[list[int]]:
    """`[bos] + ids` per prompt (no bos when the tokenizer has none); with `prompt_format="chat"`
    each prompt is a user turn rendered by the tokenizer's chat template, ready for the answer."""
    if prompt_format == "chat":
        from dswb.engine.data.records.chat import chat_prompt_ids
        return [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    enc = tokenizer(prompts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return [([bos] if bos is not None else []) + list(ids) for ids in enc]


@torch.no_grad()
def greedy_completions(model: Any, tokenizer: Any, prompts: list[str], device: Any,
                       batch_size: int = 256, max_new_tokens: int = 8, prompt_format: str = "plain") -> list[str]:
    """The greedy completion of each prompt, decoded without special tokens."""
    from dswb.engine.data.records.chat import stop_ids

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = encode_prompts(tokenizer, prompts, prompt_format)
    stops = stop_ids(tokenizer, prompt_format)
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(rows), batch_size):
            ids, mask = left_pad(rows[start:start + batch_size], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       do_sample=False, use_cache=True, pad_token_id=pad_id,
                                       eos_token_id=stops if len(stops) > 1 else stops[0])
            new = generated[:, ids.shape[1]:].tolist()
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out


THINK_SLACK = 4   # tokens beyond the worked answer's length that a thinking model may use at evaluation


def generation_budget(tokenizer: Any, task: Any) -> int | None:
    """Tokens to generate at evaluation for the built-in `task`: None (the answers decide) unless the
    task thinks, then its longest worked completion, eos and a little slack."""
    if task is None or not getattr(task, "think", False):
        return None
    longest = tokenizer(task.longest_completion(), add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return len(longest) + 1 + THINK_SLACK


def task_accuracy(model: Any, tokenizer: Any, prompts: list[str], answers: list[str], device: Any,
                  batch_size: int = 256, max_new_tokens: int | None = None, prompt_format: str = "plain") -> float:
    """Fraction of prompts whose greedy completion's answer part equals the answer exactly (0.0 for none)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        return 0.0
    if max_new_tokens is None:  # the longest answer in tokens, plus eos
        lengths = tokenizer(answers, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        max_new_tokens = max(len(x) for x in lengths) + 1
    completions = greedy_completions(model, tokenizer, prompts, device, batch_size, max_new_tokens, prompt_format)
    return sum(score(c, a) for c, a in zip(completions, answers)) / len(prompts)
