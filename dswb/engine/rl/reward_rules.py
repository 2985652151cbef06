"""The built-in verifiable rewards as pure functions: the think/answer split of a completion, and
the `format`, `math` and `length` scores (docs/rewards.md).

A completion of a reasoning model reads `<think>...</think>answer`. When the prompt already ends
inside an open thinking (`opened`: DeepSeek-R1's and Qwen3's templates put `<think>` in the
generation prompt) the completion starts inside it and holds only the closing tag. The split is
`dswb.engine.data.records.thinking`'s, the one the built-in task's scoring uses.

`format_rewards` and `math_rewards` have TRL's reward-function signature (settings as keyword
arguments), so a reward worker runs them as it runs a user's function. No torch at import;
`math_verify` is imported on first use.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from dswb.engine.data.records.thinking import DEFAULT_TAGS, split_thinking

MATH_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")
# a word (two letters or more, not a LaTeX command): the text is prose, not a bare formula
WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
MATH_INSTALL_HINT = "pip install 'dswb[math]' (or pip install 'math-verify[antlr4_13_2]')"


def answer_part(completion: str, tags: tuple[str, str] | list[str] = DEFAULT_TAGS, opened: bool = False) -> str:
    return split_thinking(completion, tags, opened).answer


def format_score(completion: str, tags: tuple[str, str] | list[str] = DEFAULT_TAGS, opened: bool = False,
                 regex: str = "") -> float:
    """1.0 when the completion is `<think>...</think>answer`: the opening tag first (absent when
    `opened`), the closing tag once, a non-empty answer; and, when `regex` is set, the whole
    completion matches it (DOTALL). Else 0.0."""
    open_tag, close_tag = tags
    if completion.count(close_tag) != 1 or completion.count(open_tag) != (0 if opened else 1):
        return 0.0
    if not opened and not completion.lstrip().startswith(open_tag):
        return 0.0
    if not completion.split(close_tag, 1)[1].strip():
        return 0.0
    if regex and _compiled(regex).fullmatch(completion) is None:
        return 0.0
    return 1.0


@functools.lru_cache(maxsize=64)
def _compiled(regex: str) -> re.Pattern:
    return re.compile(regex, re.DOTALL)


def math_score(answer: str, reference: Any) -> float | None:
    """1.0 when `answer` equals `reference` mathematically (numbers, fractions, LaTeX, expressions;
    math-verify), 0.0 when not or when the answer does not parse, None when the reference does not
    parse (unscorable by this rule). math-verify's own signal timeouts are off (they work only in a
    main thread and turn a timeout into "wrong"): the caller bounds the time; an error raises."""
    gold = _parse_math(str(reference)) if reference is not None else ()
    if not gold:
        return None
    target = _parse_math(answer) if answer.strip() else ()
    if not target:
        return 0.0
    same = math_verify().verify(list(gold), list(target), timeout_seconds=None, raise_on_error=True)
    return 1.0 if same else 0.0


@functools.lru_cache(maxsize=4096)
def _parse_math(text: str) -> tuple:
    """math-verify's parse of `text`; a bare formula (no LaTeX delimiter, no word: `2x+1`, `x^2`)
    is read as inline LaTeX, which parses more than math-verify's plain-expression reader."""
    text = text.strip()
    if text and not any(d in text for d in MATH_DELIMITERS) and not WORD.search(text):
        text = f"${text}$"
    return tuple(math_verify().parse(text, parsing_timeout=None, raise_on_error=True))


@functools.lru_cache(maxsize=1)
def math_verify():
    """The math-verify module, imported quietly (it warns once that its timeouts are off); an
    ImportError with the install hint when it is missing."""
    import logging

    try:
        import math_verify as module
    except ImportError as exc:
        raise ImportError(f"the math reward needs the math-verify package: {MATH_INSTALL_HINT} ({exc})") from None
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return module


def overlong_score(length: int, max_new_tokens: int, buffer: int = 0) -> float:
    """DAPO's soft overlong punishment: 0 up to `max_new_tokens - buffer` tokens, then falling
    linearly to -1 at `max_new_tokens`, -1 beyond (`buffer` 0: a quarter of max_new_tokens)."""
    buffer = min(buffer or max_new_tokens // 4, max_new_tokens)
    limit = max_new_tokens - buffer
    if length <= limit:
        return 0.0
    if length > max_new_tokens or buffer == 0:
        return -1.0
    return (limit - length) / buffer


def linear_length_score(length: int, max_new_tokens: int) -> float:
    return -length / max_new_tokens


def length_score(length: int, max_new_tokens: int, mode: str = "overlong", buffer: int = 0) -> float:
    if mode == "linear":
        return linear_length_score(length, max_new_tokens)
    return overlong_score(length, max_new_tokens, buffer)


# -- batch functions with TRL's signature -------------------------------------------------------

def format_rewards(prompts: list, completions: list[str], completion_ids: list | None = None, *,
                   think_open: list[bool] | None = None, think_tags: list[str] | tuple[str, str] = DEFAULT_TAGS,
                   format_regex: str = "", **columns) -> list[float | None]:
    """`format_score` of each completion (`think_open`: whether its prompt ends inside an open thinking)."""
    opened = think_open or [False] * len(completions)
    return [format_score(c, think_tags, o, format_regex) for c, o in zip(completions, opened)]


def math_rewards(prompts: list, completions: list[str], completion_ids: list | None = None, *,
                 answer: list | None = None, think_open: list[bool] | None = None,
                 think_tags: list[str] | tuple[str, str] = DEFAULT_TAGS, **columns) -> list[float | None]:
    """`math_score` of each completion's answer part against the record's `answer`."""
    if answer is None:
        raise ValueError("the prompt records have no 'answer' field")
    opened = think_open or [False] * len(completions)
    return [math_score(answer_part(c, think_tags, o), a) for c, o, a in zip(completions, opened, answer)]


BATCH_RULES = {"format": format_rewards, "math": math_rewards}
