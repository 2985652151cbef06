"""Checking what comes out of a run's files before the dashboard keeps it. Standard library only.

A parsed events line or `status.json` can hold anything JSON can: wrong types, numbers beyond
float range or non-finite, megabytes of text, control characters, thousands of keys. Each
function here returns a value of one known shape (finite or missing numbers, short printable
strings, bounded lists and dicts), or raises `ValueError` when the event cannot be used at all
(the model counts it as a bad event). Text is cut with a marker (`… [cut, 1.9 MiB]`).
"""

from __future__ import annotations

import math
from typing import Any

from dswb.util.fmt import FLOAT_LIMIT, cut_text, is_number

NAME_LIMIT = 80  # stage, metric, layer group, reward source names
LINE_LIMIT = 300  # one-line fields: paths, codes
ALERT_LIMIT = 1000  # alert messages and explanations, run errors
LOG_LIMIT = 1000  # one log line or message
SAMPLE_TEXT_LIMIT = 1000  # a prompt or completion of a `samples` event
THINK_TEXT_LIMIT = 2000  # the thinking of a `samples` row (the engine writes up to 2000 characters)
# Widgets cut what they are given again (they also take values from elsewhere) at these limits
# plus room for the marker, so text the model already cut keeps its marker.
MAX_KEYS = 256  # metrics per event
MAX_SERIES = 512  # metric histories per stage (a file naming more gets the first ones)
MAX_STAGES = 64
MAX_SAMPLES = 16
MAX_GROUPS = 64  # FP8 layer groups
MAX_BINS = 256  # batching histogram
MAX_RANKS = 64  # ranks of a distributed run the system panel lists (a file naming more: the first ones)
RANK_TEXT = ("host", "device", "gpu_name")
STEP_LIMIT = 2 ** 53
STATUS_INTS = ("step", "total_steps")
STATUS_TIMES = ("started", "updated", "eta_s")


def number(value: Any) -> float | None:
    """A finite float, else None (bools, strings, non-finite and giant numbers included)."""
    if not is_number(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def step_value(value: Any, required: bool = False) -> int:
    """A step: an integer (or integral float) within +-2**53; a missing step is 0, or an error
    when `required` (a metric without its step cannot be placed on a curve)."""
    if value is None:
        if required:
            raise ValueError("no step")
        return 0
    cls = value.__class__
    if cls is int and -STEP_LIMIT <= value <= STEP_LIMIT:
        return value
    if cls is float and math.isfinite(value) and value.is_integer() and abs(value) <= STEP_LIMIT:
        return int(value)
    raise ValueError(f"step is not an integer: {cut_text(value, 40, one_line=True)}")


def time_value(value: Any) -> float | None:
    """A unix time (any finite number), else None."""
    return number(value)


def name_text(value: Any, limit: int = NAME_LIMIT) -> str:
    return cut_text(value, limit, one_line=True)


def line_text(value: Any, limit: int = LINE_LIMIT) -> str:
    return "" if value is None else cut_text(value, limit, one_line=True)


def text_value(value: Any, limit: int = LOG_LIMIT) -> str:
    return "" if value is None else cut_text(value, limit)


def as_dict(value: Any) -> dict:
    return value if value.__class__ is dict else {}


def clean_metrics(value: Any) -> dict[str, float | None]:
    """`{name: float or None}` from an event's `metrics` (None and missing mean none); a
    non-object raises ValueError; non-numeric values are dropped, names cut. (Inlined checks:
    this runs for every metrics event, tens of thousands per second when a run is opened.)"""
    if value is None:
        return {}
    if value.__class__ is not dict:
        raise ValueError("metrics is not an object")
    out: dict[str, float | None] = {}
    names = _NAMES
    items = value.items() if len(value) <= MAX_KEYS else list(value.items())[:MAX_KEYS]
    for name, raw in items:
        cls = raw.__class__
        if cls is float or raw is None:
            kept = raw
        elif cls is int:
            kept = float(raw) if -FLOAT_LIMIT < raw < FLOAT_LIMIT else None
        else:
            continue
        safe = names.get(name) if name.__class__ is str else None
        if safe is None:
            safe = name_text(name)
            if name.__class__ is str and len(names) < 4096:
                names[name] = safe
        out[safe] = kept
    return out


_NAMES: dict[str, str] = {}  # metric names seen, as kept (names repeat in every event)


def safe_name(value: str) -> str:
    """A stage or metric name as kept: most are short and printable and pass unchanged."""
    if len(value) <= NAME_LIMIT and value.isprintable():
        return value
    return name_text(value)


def clean_ranks(value: Any) -> list[dict]:
    """The `ranks` of a distributed run's `run_start` or `system` event: one dict per rank with an
    int `rank`, short `host` / `device` / `gpu_name` texts and numeric system figures; entries that
    are not objects are dropped, at most `MAX_RANKS` kept."""
    if value.__class__ is not list:
        return []
    out = []
    for entry in value[:MAX_RANKS]:
        if entry.__class__ is not dict:
            continue
        rank = number(entry.get("rank"))
        figures = {k: v for k, v in entry.items() if k not in RANK_TEXT and k != "rank"}
        kept: dict[str, Any] = {"rank": int(rank) if rank is not None and 0 <= rank < STEP_LIMIT else len(out)}
        kept.update({k: name_text(entry[k], 60) for k in RANK_TEXT if entry.get(k) is not None})
        kept.update(clean_metrics(dict(list(figures.items())[:MAX_KEYS])))
        out.append(kept)
    return out


def clean_stages(value: Any) -> list[str]:
    if value.__class__ is not list:
        return []
    return [name_text(s) for s in value if s.__class__ is str and s][:MAX_STAGES]


def clean_alert(event: dict) -> dict:
    level = event.get("level")
    stage = event.get("stage")
    step = event.get("step")
    return {
        "t": number(event.get("t")),
        "level": name_text(level, 10).lower() if level.__class__ is str and level else "warning",
        "code": name_text(event.get("code") or "alert", 60),
        "message": line_text(event.get("message"), ALERT_LIMIT),
        "explain": line_text(event.get("explain"), ALERT_LIMIT),
        "stage": name_text(stage) if stage.__class__ is str and stage else None,
        "step": step if step.__class__ is int and abs(step) <= STEP_LIMIT else None,
    }


def clean_batching(event: dict) -> dict:
    """`{"stage", "hist": {"edges", "counts"} or {}, "metrics": {name: number}}`."""
    hist = as_dict(event.get("hist"))
    edges, counts = hist.get("edges"), hist.get("counts")
    clean_hist: dict = {}
    if edges.__class__ is list and counts.__class__ is list and 0 < len(counts) <= MAX_BINS \
            and len(edges) >= len(counts) + 1:
        e = [number(x) for x in edges[: len(counts) + 1]]
        c = [number(x) for x in counts]
        if all(x is not None for x in e) and all(x is not None and x >= 0 for x in c):
            clean_hist = {"edges": e, "counts": [int(x) if x < 2 ** 62 else 2 ** 62 for x in c]}
    metrics = as_dict(event.get("metrics"))
    clean = {}
    for name, value in list(metrics.items())[:32]:
        value = number(value)
        if value is not None:
            clean[name_text(name, 40)] = value
    return {"stage": None, "hist": clean_hist, "metrics": clean}


def clean_layers(layers: dict) -> dict[str, dict[str, float | None]]:
    out = {}
    for group, values in list(layers.items())[:MAX_GROUPS]:
        values = as_dict(values)
        out[name_text(group)] = {key: number(values.get(key)) for key in ("amax", "saturation_pct", "underflow_pct")}
    return out


def clean_samples(value: Any) -> list[dict]:
    """The rollouts of a `samples` event (prompt, completion, reward, rewards per source,
    advantage, length, ended; in a reasoning run think, answer, think_tokens), at most MAX_SAMPLES."""
    if value.__class__ is not list:
        raise ValueError("samples is not a list")
    out = []
    for sample in value[:MAX_SAMPLES]:
        sample = as_dict(sample)
        rewards = as_dict(sample.get("rewards"))
        length = number(sample.get("length"))
        ended = sample.get("ended")
        out.append({
            "prompt": text_value(sample.get("prompt"), SAMPLE_TEXT_LIMIT),
            "completion": text_value(sample.get("completion"), SAMPLE_TEXT_LIMIT),
            "reward": number(sample.get("reward")),
            "rewards": {name_text(k, 40): number(v) for k, v in list(rewards.items())[:8]},
            "advantage": number(sample.get("advantage")),
            "length": int(length) if length is not None and abs(length) < 2 ** 53 else None,
            "ended": ended if ended.__class__ is bool else None,
            **_reasoning_fields(sample),
        })
    return out


def _reasoning_fields(sample: dict) -> dict:
    """`think` and `answer` (text or None) and `think_tokens` (int or None) of a samples row."""
    think, answer = sample.get("think"), sample.get("answer")
    tokens = sample.get("think_tokens")
    return {"think": text_value(think, THINK_TEXT_LIMIT) if think.__class__ is str else None,
            "answer": text_value(answer, SAMPLE_TEXT_LIMIT) if answer.__class__ is str else None,
            "think_tokens": tokens if tokens.__class__ is int and 0 <= tokens < STEP_LIMIT else None}


def clean_status(value: Any) -> dict | None:
    """`status.json` as the viewers use it; None when it is not an object (missing, torn)."""
    if value.__class__ is not dict:
        return None
    state = value.get("state")
    pid = value.get("pid")
    host = value.get("host")
    out: dict[str, Any] = {
        "state": name_text(state, 20) if state.__class__ is str and state else "unknown",
        "pid": pid if pid.__class__ is int and 0 < pid < 1 << 31 else None,
        "host": host if host.__class__ is str and len(host) <= 255 else None,
        "run_id": name_text(value.get("run_id")) if value.get("run_id").__class__ is str else None,
        "stage": name_text(value.get("stage")) if value.get("stage").__class__ is str else None,
        "stages": clean_stages(value.get("stages")),
        "error": line_text(value.get("error"), ALERT_LIMIT) if value.get("error") is not None else None,
        "last_metrics": {k: v for k, v in _metrics_or_empty(value.get("last_metrics")).items()},
    }
    for key in STATUS_INTS:
        raw = value.get(key)
        out[key] = raw if raw.__class__ is int and 0 <= raw <= STEP_LIMIT else None
    for key in STATUS_TIMES:
        out[key] = number(value.get(key))
    return out


def _metrics_or_empty(value: Any) -> dict:
    try:
        return clean_metrics(value)
    except ValueError:
        return {}
