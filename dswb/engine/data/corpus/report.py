"""The data report: what preparation read, dropped, kept and produced, as a dict and as text.

Fields (also in `docs/data.md`): `files`, `input_mb`, `records` (documents read, bad ones
included), `bad_records`, `empty` (blank documents), `cleaned_away` (empty after cleaning),
`exact_duplicates`, `near_duplicates`, `documents` (kept), `train_documents`,
`val_documents`, `chars`, `text_mb`, `doc_tokens` (tokens of the documents' text, no bos/eos),
`tokens` (tokens in samples, bos/eos and chunk overlaps included), `chunks` (samples),
`train_samples`, `val_samples`, `train_tokens`, `bytes_per_token` (text bytes per document
token: the tokenizer's compression), `tokens_per_doc` (`mean`, `p50`, `p90`, `p99`, `max`),
`tokens_per_doc_hist` and `length_hist` (train sample lengths; `edges`, `counts`),
`seconds` (per phase), `workers`, `shards`, `resumed_shards`. Pure apart from reading arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dswb.engine.data.batches.batching import length_histogram


def percentiles(values: np.ndarray) -> dict:
    """mean, p50, p90, p99 and max of `values` (zeros when empty)."""
    if not len(values):
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": round(float(np.mean(values)), 2), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": int(np.max(values))}


def bytes_per_token(text_bytes: int, tokens: int) -> float:
    """Text bytes per token of the documents (higher = the tokenizer compresses better)."""
    return round(text_bytes / tokens, 3) if tokens else 0.0


def build_report(state: Any, store: Any, per_doc: np.ndarray, doc_tokens: np.ndarray, train: np.ndarray,
                 val: np.ndarray, n_val_docs: int, settings: Any, timings: dict) -> dict:
    """The report of a file corpus preparation (see the module docstring for the fields)."""
    lengths = store.lengths
    train_lengths = lengths[train] if len(train) else np.zeros(0, np.int32)
    doc_token_total = int(doc_tokens.sum(dtype=np.int64))
    return {
        "files": len(settings.files), "input_mb": round(state.input_bytes / 1e6, 3),
        "records": state.records, "bad_records": state.bad, "bad_examples": state.bad_examples,
        "empty": state.empty, "cleaned_away": state.cleaned_away,
        "exact_duplicates": state.exact_duplicates, "near_duplicates": state.near_duplicates,
        "documents": state.documents, "train_documents": state.documents - n_val_docs,
        "val_documents": n_val_docs, "chars": state.chars, "text_mb": round(state.text_bytes / 1e6, 3),
        "doc_tokens": doc_token_total, "tokens": int(lengths.sum(dtype=np.int64)), "chunks": len(lengths),
        "train_samples": len(train), "val_samples": len(val),
        "train_tokens": int(train_lengths.sum(dtype=np.int64)),
        "bytes_per_token": bytes_per_token(state.text_bytes, doc_token_total),
        "tokens_per_doc": percentiles(doc_tokens), "tokens_per_doc_hist": length_histogram(doc_tokens),
        "length_hist": length_histogram(train_lengths),
        "seconds": timings, "workers": settings.workers, "shards": len(store.shards),
        "resumed_shards": state.resumed_shards,
        "dedup": {"exact": settings.dedup, "near": settings.near is not None,
                  "near_threshold": settings.near[0] if settings.near else None},
    }


def small_report(documents: int, chars: int, text_bytes: int, doc_tokens: np.ndarray, lengths: np.ndarray,
                 train: int, val: int, train_tokens: int) -> dict:
    """The same fields for in-memory sources (the built-in task): nothing dropped."""
    total = int(doc_tokens.sum(dtype=np.int64))
    return {"files": 0, "input_mb": 0.0, "records": documents, "bad_records": 0, "bad_examples": [], "empty": 0,
            "cleaned_away": 0, "exact_duplicates": 0, "near_duplicates": 0, "documents": documents,
            "train_documents": documents - val, "val_documents": val, "chars": chars,
            "text_mb": round(text_bytes / 1e6, 3), "doc_tokens": total, "tokens": int(lengths.sum(dtype=np.int64)),
            "chunks": len(lengths), "train_samples": train, "val_samples": val, "train_tokens": train_tokens,
            "bytes_per_token": bytes_per_token(text_bytes, total), "tokens_per_doc": percentiles(doc_tokens),
            "tokens_per_doc_hist": length_histogram(doc_tokens), "length_hist": length_histogram(lengths[:train]),
            "seconds": {}, "workers": 1, "shards": 1, "resumed_shards": 0,
            "dedup": {"exact": False, "near": False, "near_threshold": None}}


def _n(value: float) -> str:
    return f"{value:,.0f}" if isinstance(value, int) or float(value).is_integer() else f"{value:,.2f}"


def _bars(hist: dict, width: int = 30) -> list[str]:
    counts, edges = hist.get("counts") or [], hist.get("edges") or []
    top = max(counts, default=0)
    lines = []
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        bar = "#" * (round(width * c / top) if top else 0)
        lines.append(f"  {lo:>8.0f} - {hi:<8.0f} {c:>10,} {bar}")
    return lines


def format_report(report: dict, histograms: bool = True) -> str:
    """The report as aligned text lines (what `dswb data prepare` prints)."""
    r = report
    dup = r.get("dedup", {})
    near = f"{_n(r['near_duplicates'])}" if dup.get("near") else "off"
    rows = [
        ("files", f"{_n(r['files'])} ({r['input_mb']:,.1f} MB)"),
        ("documents read", _n(r["records"])),
        ("bad records skipped", _n(r["bad_records"])),
        ("blank", _n(r["empty"])),
        ("cleaned away", _n(r["cleaned_away"])),
        ("exact duplicates", _n(r["exact_duplicates"]) if dup.get("exact", True) else "off"),
        ("near duplicates", near),
        ("documents kept", f"{_n(r['documents'])} ({_n(r['train_documents'])} train / {_n(r['val_documents'])} val)"),
        ("text", f"{r['text_mb']:,.1f} MB, {_n(r['chars'])} characters"),
        ("document tokens", _n(r["doc_tokens"])),
        ("bytes per token", f"{r['bytes_per_token']:.2f}"),
        ("tokens per document", "mean {mean:,.1f}, p50 {p50:,.0f}, p90 {p90:,.0f}, max {max:,}".format(**r["tokens_per_doc"])),
        ("chunks (samples)", f"{_n(r['chunks'])} ({_n(r['train_samples'])} train / {_n(r['val_samples'])} val)"),
        ("sample tokens", f"{_n(r['tokens'])} ({_n(r['train_tokens'])} train)"),
    ]
    seconds = r.get("seconds") or {}
    if seconds:
        rows.append(("seconds", ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in seconds.items())))
    rows.append(("workers / shards", f"{r['workers']} / {r['shards']}"
                 + (f" (resumed after {r['resumed_shards']} text shards)" if r.get("resumed_shards") else "")))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    for example in r.get("bad_examples") or []:
        lines.append(f"  bad record: {example}")
    if histograms:
        lines += ["train sample lengths (tokens):"] + _bars(r["length_hist"])
        lines += ["tokens per document:"] + _bars(r["tokens_per_doc_hist"])
    return "\n".join(lines)
