"""The think/answer split of a completion, as DeepSeek-R1 writes it: `<think>REASONING</think>ANSWER`.

One rule, used by the rewards, the built-in task's scoring, the reasoning metrics and the samples:
- the closing tag present: the thinking is what comes before it (after the opening tag, when there
  is one), the answer what comes after the last closing tag, stripped;
- no tag at all and the thinking not opened by the prompt: no thinking, the whole completion is the
  answer (a model that does not think);
- the thinking opened (by an opening tag, or by the prompt: DeepSeek-R1's and Qwen3's templates end
  the generation prompt with `<think>`) but never closed: all thinking, no answer.
Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TAGS = ("<think>", "</think>")


@dataclass(frozen=True)
class Thought:
    think: str | None      # None: the completion does not think
    answer: str            # "" when the thinking never closed


def split_thinking(completion: str, tags: tuple[str, str] | list[str] = DEFAULT_TAGS, opened: bool = False) -> Thought:
    """The thinking and the answer of `completion` (see the module docstring)."""
    open_tag, close_tag = tags
    head, closed, tail = completion.rpartition(close_tag)
    if closed:
        start = head.find(open_tag)
        think = head[start + len(open_tag):] if start >= 0 else head
        return Thought(think=think.strip(), answer=tail.strip())
    start = completion.find(open_tag)
    if start >= 0:
        return Thought(think=completion[start + len(open_tag):].strip(), answer="")
    if opened:
        return Thought(think=completion.strip(), answer="")
    return Thought(think=None, answer=completion.strip())
