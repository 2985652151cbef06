"""Split long token sequences into overlapping windows (the blog's 512 / 50 / 256 scheme), pure.

Rules:
- A sequence of at most `chunk_size` tokens is kept whole, however short (as in the blog's
  sketch).
- A longer one is cut into windows of `chunk_size` tokens starting every
  `chunk_size - overlap` tokens, until a window reaches the end.
- The blog's sketch drops a final window shorter than `min_chunk`, silently losing the
  document's tail. Here no window shorter than `min_chunk` is emitted either, but the tail is never lost: when the
  remainder is too short, the last window is moved back to end exactly at the last token (a full
  `chunk_size` window that overlaps its neighbour by more than `overlap`). So every token is in at
  least one chunk, every chunk except a whole short document has `>= min_chunk` tokens, and the
  last chunk always ends at the document's end.
"""

from __future__ import annotations

from typing import Sequence


def chunk_spans(length: int, chunk_size: int = 512, overlap: int = 50,
                min_chunk: int = 256) -> list[tuple[int, int]]:
    """`(start, end)` windows covering `range(length)` under the rules above."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 0 <= overlap < chunk_size:
        raise ValueError(f"overlap must be in [0, chunk_size), got {overlap}")
    if length <= chunk_size:
        return [(0, length)] if length > 0 else []
    min_chunk = min(min_chunk, chunk_size)
    stride = chunk_size - overlap
    spans = []
    start = 0
    while start + chunk_size < length:
        spans.append((start, start + chunk_size))
        start += stride
    if length - start >= min_chunk:
        spans.append((start, length))
    else:  # too short a tail: back the last window off so it ends at the last token
        spans.append((length - chunk_size, length))
    return spans


def chunk_tokens(ids: Sequence[int], chunk_size: int = 512, overlap: int = 50,
                 min_chunk: int = 256) -> list[list[int]]:
    """The token windows of `ids` (see `chunk_spans`)."""
    return [list(ids[a:b]) for a, b in chunk_spans(len(ids), chunk_size, overlap, min_chunk)]
