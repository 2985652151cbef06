"""`dswb bench batching`: padding efficiency and padded batch size vs the token budget.

Log-normal sample lengths (median e^5 ~ 148, sigma 0.8, clipped to [8, 4096]), planned by:
- dswb bucketed: length-sorted within shuffled mega-batches, padded budget B x longest;
- dswb packed: documents packed into rows of min(max_len, max_tokens), long ones split;
- fixed: shuffled batches of one size, chosen so the mean padded batch is about the budget;
- blog sketch: the `DynamicBatcher` of the blog's sketch (see the README), which budgets the SUM of
  lengths (reimplemented faithfully below, including the empty batch it returns when a sample alone
  exceeds the budget).
Two budgets: the sketch's default of 8192 tokens, and a tight 1024 that ~1% of samples exceed
(dswb truncates and counts them; the sketch puts each alone in an over-budget batch, and returns
an empty batch only when the very first sample is over budget, since its current batch is empty
only then).
"""

from __future__ import annotations

import time

import numpy as np

from dswb.engine.data.batches.batching import batch_stats, plan_bucketed, plan_fixed, plan_packed, plan_summary

MEAN_LOG, SIGMA, MIN_LEN, MAX_SAMPLE = 5.0, 0.8, 8, 4096
SCENARIOS = [{"name": "blog sketch's budget", "max_tokens": 8192, "max_len": 2048},
             {"name": "tight budget", "max_tokens": 1024, "max_len": 2048}]


def sample_lengths(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    lengths = np.round(rng.lognormal(MEAN_LOG, SIGMA, n))
    return np.clip(lengths, MIN_LEN, MAX_SAMPLE).astype(int).tolist()


class BlogSketchBatcher:
    """The blog's batcher, as its sketch writes it: it budgets the sum of lengths, not B x longest."""

    def __init__(self, max_tokens: int = 8192) -> None:
        self.max_tokens = max_tokens
        self.current_batch: list = []
        self.current_length = 0

    def add_sample(self, sample):
        sample_length = len(sample)
        if self.current_length + sample_length > self.max_tokens:
            batch_to_return = self.current_batch  # [] when the first sample alone is over budget
            self.current_batch = [sample]
            self.current_length = sample_length
            return batch_to_return
        self.current_batch.append(sample)
        self.current_length += sample_length
        return None

    def get_final_batch(self):
        return self.current_batch if self.current_batch else None


def blog_sketch_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Run the blog's batcher over samples (given as their lengths) in dataset order."""
    batcher, batches = BlogSketchBatcher(max_tokens), []
    for n in lengths:
        out = batcher.add_sample(range(n))
        if out is not None:
            batches.append([len(s) for s in out])
    final = batcher.get_final_batch()
    if final is not None:
        batches.append([len(s) for s in final])
    return batches


def summarize_batches(batches: list[list[int]], max_tokens: int) -> dict:
    """The plan_summary fields for raw batches of lengths (empty batches included)."""
    stats = [batch_stats(b) for b in batches]
    real = sum(s["real"] for s in stats)
    padded = sum(s["padded"] for s in stats)
    n = len(batches)
    return {"batches": n, "real_tokens": real, "padded_tokens": padded,
            "efficiency": real / padded if padded else 0.0,
            "largest_padded": max((s["padded"] for s in stats), default=0),
            "over_budget": sum(s["padded"] > max_tokens for s in stats),
            "mean_real_per_batch": real / n if n else 0.0,
            "mean_padded_per_batch": padded / n if n else 0.0,
            "truncated": 0, "rejected": 0}


def fixed_batch_size(lengths: list[int], max_tokens: int, max_len: int) -> int:
    """Largest fixed batch size whose mean padded batch (B x longest) stays within the budget."""
    def mean_padded(b: int) -> float:
        return plan_summary(plan_fixed(lengths, b, seed=0, max_len=max_len), max_tokens)["mean_padded_per_batch"]

    lo, hi = 1, max(1, max_tokens // MIN_LEN)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if mean_padded(mid) <= max_tokens else (lo, mid - 1)
    return lo


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def run_scenario(lengths: list[int], max_tokens: int, max_len: int) -> list[dict]:
    rows = []
    plan, ms = _timed(lambda: plan_bucketed(lengths, max_tokens, 0, 0, 64, max_len, "truncate"))
    rows.append({"batcher": "dswb bucketed", **plan_summary(plan, max_tokens), "empty_batches": 0, "plan_ms": ms})
    plan, ms = _timed(lambda: plan_packed(lengths, max_tokens, 0, 0, max_len, "split"))
    rows.append({"batcher": "dswb packed", **plan_summary(plan, max_tokens), "empty_batches": 0,
                 "split": plan.split, "plan_ms": ms})
    size = fixed_batch_size(lengths, max_tokens, max_len)
    plan, ms = _timed(lambda: plan_fixed(lengths, size, 0, 0, max_len))
    rows.append({"batcher": f"fixed (B={size})", **plan_summary(plan, max_tokens), "empty_batches": 0, "plan_ms": ms})
    batches, ms = _timed(lambda: blog_sketch_batches(lengths, max_tokens))
    rows.append({"batcher": "blog sketch (sum)", **summarize_batches(batches, max_tokens),
                 "empty_batches": sum(1 for b in batches if not b), "plan_ms": ms})
    return rows


def run(quick: bool = False) -> dict:
    n = 2000 if quick else 10000
    lengths = sample_lengths(n)
    scenarios = []
    for sc in SCENARIOS:
        scenarios.append({**sc, "rows": run_scenario(lengths, sc["max_tokens"], sc["max_len"])})
    return {
        "samples": n,
        "lengths": {"dist": f"lognormal(mu={MEAN_LOG}, sigma={SIGMA}) clipped to [{MIN_LEN}, {MAX_SAMPLE}]",
                    "mean": float(np.mean(lengths)), "median": float(np.median(lengths)),
                    "max": int(max(lengths)), "real_tokens": int(sum(lengths))},
        "goals": {"bucketed_efficiency": 0.95, "packed_efficiency": 0.99, "over_budget": 0},
        "scenarios": scenarios,
    }


def format_table(result: dict) -> str:
    ln = result["lengths"]
    lines = [f"batching: {result['samples']} samples, {ln['dist']}, mean {ln['mean']:.0f}, "
             f"median {ln['median']:.0f}, max {ln['max']}"]
    head = (f"{'batcher':<22}{'batches':>8}{'eff':>7}{'largest BxL':>13}{'over':>6}"
            f"{'empty':>6}{'real/b':>8}{'padded/b':>9}{'trunc':>6}{'ms':>7}")
    for sc in result["scenarios"]:
        lines += ["", f"max_tokens {sc['max_tokens']}, max_len {sc['max_len']} ({sc['name']})", head]
        for r in sc["rows"]:
            lines.append(f"{r['batcher']:<22}{r['batches']:>8}{r['efficiency']:>7.3f}"
                         f"{r['largest_padded']:>13}{r['over_budget']:>6}{r['empty_batches']:>6}"
                         f"{r['mean_real_per_batch']:>8.0f}{r['mean_padded_per_batch']:>9.0f}"
                         f"{r['truncated']:>6}{r['plan_ms']:>7.0f}")
    goals = result["goals"]
    lines.append("")
    lines.append(f"goals: bucketed >= {goals['bucketed_efficiency']}, packed >= {goals['packed_efficiency']}, "
                 f"never over budget (dswb)")
    lines.append("eff = real / padded tokens; largest BxL = biggest padded batch; over = batches with "
                 "B x longest > max_tokens; empty = empty batches emitted")
    lines.append("blog sketch (sum) = the batcher of the blog's sketch, which budgets the sum of lengths")
    return "\n".join(lines)
