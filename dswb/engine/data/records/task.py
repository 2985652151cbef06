"""The built-in verifiable task: addition of two zero-padded `digits`-digit numbers.

Format (fixed, for every stage): prompt `"37+48="`, answer `"085"`: operands zero-padded to
`digits`, the sum zero-padded to `digits + 1` characters, so every answer has the same length.
Pretraining text is prompt + completion (`"37+48=085"`); the pipeline adds bos/eos around it.

With `think=True` (the reasoning task) the completion works the sum out column by column, ones
first, in a `<think>` block before the answer: `"457+386="` -> `"<think>7+6=13,5+8+1=14,4+3+1=8</think>0843"`
(each column: its digits, `+1` when a carry comes in, and their sum). The answer, and how it is
scored, stay the same: exact match of the part after `</think>` (`dswb.engine.data.records.thinking`).
`<think>` and `</think>` are single tokens of the task's character vocabulary, added as normal (not
special) tokens so that decoding keeps them.

Splits are disjoint sets of ordered operand pairs drawn without replacement, deterministically
from `seed`. The test split is drawn first, then val, then train, so the test (and val) sets do
not change when `n_train` changes. Pure Python apart from numpy for the permutation; no torch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from dswb.engine.data.records.thinking import DEFAULT_TAGS, split_thinking
from dswb.errors import UserError

EOS_TEXT = "<|eos|>"
PERMUTE_LIMIT = 10**6  # up to this many pairs: a full permutation; beyond: rejection sampling


@dataclass(frozen=True)
class TaskExample:
    a: int
    b: int
    prompt: str
    answer: str
    completion: str = ""   # what the model writes: the answer, or the worked answer with think=True

    @property
    def text(self) -> str:
        return self.prompt + (self.completion or self.answer)


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    kind: str  # "near" (a plausible mistake) or "random"


@dataclass
class TaskSplits:
    train: list[TaskExample]
    val: list[TaskExample]
    test: list[TaskExample]


def score(completion: str, answer: str) -> bool:
    """Exact match of the answer part (after `</think>` when the completion thinks), ignoring
    surrounding whitespace and anything from an eos marker on."""
    text = completion.split(EOS_TEXT, 1)[0]
    return split_thinking(text).answer == answer.strip()


def task_seed(config: Any) -> int:
    """The seed of the task's split: `task.seed`, or the run's seed when it is -1."""
    return config.run.seed if config.task.seed < 0 else config.task.seed


def column_steps(a: int, b: int, digits: int) -> str:
    """The worked sum, ones first: `7+6=13,5+8+1=14,4+3+1=8` for 457+386."""
    steps, carry = [], 0
    for _ in range(digits):
        x, y = a % 10, b % 10
        total = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        a, b, carry = a // 10, b // 10, total // 10
    return ",".join(steps)


class AdditionTask:
    """`a+b=` with `digits`-digit operands; see the module docstring for the format."""

    name = "addition"

    def __init__(self, digits: int = 2, seed: int = 0, think: bool = False) -> None:
        if not 1 <= digits <= 9:
            raise UserError(f"task.digits: must be between 1 and 9, got {digits}")
        self.digits = digits
        self.seed = seed
        self.think = think
        self.base = 10**digits

    @property
    def alphabet(self) -> str:
        return "0123456789+=," if self.think else "0123456789+="

    @property
    def tags(self) -> tuple[str, ...]:
        """Tokens beyond the characters: the think tags of the reasoning task."""
        return DEFAULT_TAGS if self.think else ()

    @property
    def n_pairs(self) -> int:
        return self.base * self.base

    @property
    def answer_len(self) -> int:
        return self.digits + 1

    def example(self, a: int, b: int) -> TaskExample:
        d = self.digits
        answer = self.format_answer(a + b)
        completion = f"{DEFAULT_TAGS[0]}{column_steps(a, b, d)}{DEFAULT_TAGS[1]}{answer}" if self.think else answer
        return TaskExample(a, b, f"{a:0{d}d}+{b:0{d}d}=", answer, completion)

    def longest_completion(self) -> str:
        """A completion of the greatest length (every column carries)."""
        top = self.base - 1
        return self.example(top, top).completion

    def format_answer(self, value: int) -> str:
        return f"{value:0{self.answer_len}d}"

    def split(self, n_train: int, n_val: int, n_test: int) -> TaskSplits:
        """Disjoint train/val/test examples; a UserError if they need more pairs than exist."""
        for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n < 0:
                raise UserError(f"task.{key}: must be >= 0, got {n}")
        total = n_train + n_val + n_test
        if total > self.n_pairs:
            raise UserError(f"task.n_train + task.n_val + task.n_test = {total} exceeds the {self.n_pairs} "
                            f"distinct pairs of {self.digits}-digit operands")
        idx = self._draw(total)
        pairs = [self.example(i // self.base, i % self.base) for i in idx]
        return TaskSplits(test=pairs[:n_test], val=pairs[n_test:n_test + n_val], train=pairs[n_test + n_val:])

    def _draw(self, k: int) -> list[int]:
        """k distinct pair indices; the first j are the same for any k >= j (prefix-stable)."""
        if self.n_pairs <= PERMUTE_LIMIT:
            return np.random.default_rng(self.seed).permutation(self.n_pairs)[:k].tolist()
        rng = random.Random(self.seed)
        seen: set[int] = set()
        out: list[int] = []
        while len(out) < k:
            i = rng.randrange(self.n_pairs)
            if i not in seen:
                seen.add(i)
                out.append(i)
        return out

    # -- formats for each stage ------------------------------------------------------------
    def pretrain_texts(self, examples: list[TaskExample]) -> list[str]:
        return [e.text for e in examples]

    def sft_pairs(self, examples: list[TaskExample]) -> list[tuple[str, str]]:
        """(prompt, completion) pairs; the loss belongs on the completion (and eos)."""
        return [(e.prompt, e.completion) for e in examples]

    def rl_prompts(self, examples: list[TaskExample]) -> list[tuple[str, str]]:
        """(prompt, reference answer) pairs; reward with `score(completion, answer)`."""
        return [(e.prompt, e.answer) for e in examples]

    def preference_pairs(self, examples: list[TaskExample], near_fraction: float = 0.5,
                         seed: int | None = None) -> list[PreferencePair]:
        """(prompt, chosen = right answer, rejected = a wrong one) for each example.

        A `near_fraction` of the rejected answers are near misses (off by one in a digit, a lost
        carry, swapped digits), the kind of mistake a model really makes; the rest are random.
        """
        rng = random.Random(self.seed if seed is None else seed)
        out = []
        for e in examples:
            near = self.near_misses(e.a, e.b)
            if near and rng.random() < near_fraction:
                wrong, kind = rng.choice(near), "near"
            else:
                wrong, kind = self._random_wrong(e.a + e.b, rng), "random"
            out.append(PreferencePair(e.prompt, e.completion, self.rejected_completion(e, wrong), kind))
        return out

    def rejected_completion(self, example: TaskExample, wrong: int) -> str:
        """A wrong completion: the wrong answer (after the right working, with think=True: the
        mistake is in the answer, where a thinking model also makes it)."""
        answer = self.format_answer(wrong)
        if not self.think:
            return answer
        return example.completion[:len(example.completion) - len(example.answer)] + answer

    def near_misses(self, a: int, b: int) -> list[int]:
        """Wrong sums close to the right one: +-1, +-10, +-100, a dropped carry, swapped digits."""
        right = a + b
        top = 10**self.answer_len
        cands = {right + delta for delta in (1, -1, 10, -10, 100, -100)}
        cands.add(_sum_without_carry(a, b))
        text = self.format_answer(right)
        for i in range(len(text) - 1):
            swapped = text[:i] + text[i + 1] + text[i] + text[i + 2:]
            cands.add(int(swapped))
        return sorted(c for c in cands if c != right and 0 <= c < top)

    def _random_wrong(self, right: int, rng: random.Random) -> int:
        top = 2 * (self.base - 1) + 1
        wrong = rng.randrange(top - 1)
        return wrong if wrong < right else wrong + 1  # uniform over [0, top) minus `right`

    score = staticmethod(score)


def _sum_without_carry(a: int, b: int) -> int:
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out
