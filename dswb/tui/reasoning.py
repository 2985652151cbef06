"""Reasoning runs (completions written `<think>...</think>answer`), as the dashboard and
`dswb runs samples` show them.

An RL stage of a reasoning run adds `reasoning/*` metrics (format rate, accuracy, thinking
length), a `rewards/<source>/unscorable` count per reward source, and `think`, `answer` and
`think_tokens` to each row of its `samples` events (docs/run-directory.md). These pure functions
say whether a stage or a row has them and fold a thinking into one short line. They take
anything a run file can hold. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable

from dswb.util.fmt import as_text, cut_text, fmt_num

REASONING_PREFIX = "reasoning/"
FOLD_WIDTH = 80  # characters of a folded thinking
MAX_SOURCES = 8  # reward sources plotted and listed


def has_reasoning(names: Iterable[object]) -> bool:
    """Whether metric `names` hold any `reasoning/*` metric (the stage of a reasoning run)."""
    return any(name.__class__ is str and name.startswith(REASONING_PREFIX) for name in names)


def reward_source_names(names: Iterable[object]) -> list[str]:
    """The reward sources named by `rewards/<source>/mean` metrics, in order, at most MAX_SOURCES."""
    sources = []
    for name in names:
        if name.__class__ is str and name.startswith("rewards/") and name.endswith("/mean") and len(name) > 13:
            sources.append(name[len("rewards/"):-len("/mean")])
    return sources[:MAX_SOURCES]


def has_think(sample: object) -> bool:
    """Whether a `samples` row carries a thinking (`think` a string, even empty)."""
    return isinstance(sample, dict) and isinstance(sample.get("think"), str)


def any_think(samples: object) -> bool:
    return isinstance(samples, list) and any(has_think(s) for s in samples)


def answer_of(sample: dict) -> str | None:
    """The answer after the thinking, None when there is none (the thinking never closed)."""
    answer = sample.get("answer")
    return answer if isinstance(answer, str) and answer.strip() else None


def think_size(think: object, tokens: object) -> str:
    """`37 tokens` (`1 token`), or `412 chars` when the row has no token count."""
    if tokens.__class__ is int and tokens >= 0:
        count, unit = tokens, "token"
    else:
        count, unit = len(as_text(think).strip()), "char"
    return f"{fmt_num(count)} {unit}" + ("" if count == 1 else "s")


def fold_think(think: object, tokens: object = None, width: int = FOLD_WIDTH) -> str:
    """The thinking as one line: its first `width` characters or so (whitespace and line breaks
    run together, cut at a word), `…` when there is more, then its size:
    `Add the units: 2+4=6, then the tens… (37 tokens)`."""
    flat = " ".join(as_text(think).split())
    head = flat
    if len(flat) > width:
        head = flat[:width]
        space = head.rfind(" ")
        head = head[:space] if space > width // 2 else head
    head = cut_text(head, width, one_line=True) if head else "(empty)"
    return f"{head}{'…' if len(head) < len(flat) else ''} ({think_size(think, tokens)})"
