"""Text cleaning as the blog's sketch intends: HTML tags, URLs and "special" characters become spaces.

Uses the `regex` package because `\\p{P}` (Unicode punctuation) is not supported by `re`
(the plain whitespace rules use `re`, which is faster for them).
Rules, each switchable:
- `strip_html`: HTML/XML tags (`<p>`, `</a>`, `<br/>`, `<a href=...>`) and comments. A bare `<`
  in prose ("a < b") is kept, unlike the blog's sketch's `<.*?>`.
- `strip_urls`: `http://...`, `https://...` and `www....` up to the next whitespace
  (the blog's sketch's `http\\S+` would also eat words such as "httpd").
- `strip_special`: every character that is not a word character, whitespace or Unicode
  punctuation (`[^\\w\\s\\p{P}]`). Note this removes symbols (`\\p{S}`: `+ = $ < > | ~ ^`, emoji).
Whitespace is then normalised: `\\r\\n` -> `\\n`, runs of spaces/tabs -> one space, spaces at line
ends removed, 3+ newlines -> a blank line, and the text is stripped.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import regex

HTML_TAG = regex.compile(r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]{0,2000})?/?>", regex.DOTALL)
URL = regex.compile(r"\b(?:https?://|www\.)\S+", regex.IGNORECASE)
SPECIAL = regex.compile(r"[^\w\s\p{P}]+")
HSPACE = re.compile(r" [^\S\n]+|[^\S\n ][^\S\n]*")  # runs to squeeze; a lone " " is left alone (fast)
SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
MANY_NEWLINES = re.compile(r"\n{3,}")


def make_cleaner(strip_html: bool = True, strip_urls: bool = True,
                 strip_special: bool = True) -> Callable[[str], str]:
    """A function `text -> cleaned text` applying the chosen rules (see module docstring)."""
    patterns = [p for p, on in ((HTML_TAG, strip_html), (URL, strip_urls), (SPECIAL, strip_special)) if on]

    def clean(text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        for pattern in patterns:
            text = pattern.sub(" ", text)
        text = HSPACE.sub(" ", text)
        text = SPACE_AROUND_NEWLINE.sub("\n", text)
        text = MANY_NEWLINES.sub("\n\n", text)
        return text.strip()

    return clean


def clean_batch(texts: Iterable[str], cleaner: Callable[[str], str]) -> list[str]:
    """Clean every text; empty results are kept (the caller decides whether to drop them)."""
    return [cleaner(text) for text in texts]
