"""`dswb bench data`: data preparation speed and memory at scale.

1. Tokenization paths (in-process): clean + tokenize + chunk of two synthetic corpora (long and
   short documents) one document at a time (as the blog's sketch does), batched on one thread, and
   batched with the tokenizers library's own threads; all must produce identical samples (asserted).
2. Workers: `prepare_data` on a synthetic JSONL corpus with 1 and N worker processes (N = the
   cores, at least 2), each in a fresh subprocess and cache: MB/s of the whole preparation and of
   its tokenize phase, speedup, peak RSS of the main process and of the largest worker.
3. Against `datasets.map(batched=True, num_proc=N)` (when `datasets` is installed): the same
   corpus and the same fast tokenizer; dswb with cleaning and dedup off, so both read JSONL,
   tokenize and write their results (dswb also chunks).
4. Scale: peak RSS of preparation and of training (a real `dswb` pretraining run of the tiny model
   on the prepared store, in a subprocess) at two corpus sizes, and the time to the first batch
   with a warm cache (after imports). Goal: training RSS within 200 MB across the sizes.
Corpora: seeded prose-like documents (words, punctuation, HTML, URLs, emoji, CJK), each with a
unique prefix so dedup keeps them all. The tokenizer is a byte-level BPE (2048 tokens) trained
once on a sample and passed as `model.tokenizer`, so the timings measure tokenization, not BPE
training. Timings on a shared machine are indicative; compare runs on a quiet one.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from dswb.engine.data.corpus.cleaning import clean_batch, make_cleaner

BATCH = 1000
PARALLELISM = "TOKENIZERS_PARALLELISM"
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qu", "an", "el", "or", "is", "th", "ing"]
EXTRAS = ["<p>", "</p>", "<b>", "</b>", '<a href="https://example.org/x">', "</a>", "<br/>",
          "https://example.com/page?id=42", "www.example.net/path", "\U0001F600", "深度求索", "€5", "a+b=c"]


def synthetic_corpus(target_bytes: int, seed: int = 0, median_words: float = 250.0) -> list[str]:
    """Documents with log-normal word counts around `median_words` until `target_bytes` of UTF-8."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    mu = math.log(median_words)
    docs, total = [], 0
    while total < target_bytes:
        n_words = max(3, int(rng.lognormvariate(mu, 1.0)))
        parts = []
        for i in range(n_words):
            r = rng.random()
            if r < 0.03:
                parts.append(rng.choice(EXTRAS))
            else:
                word = rng.choice(words)
                parts.append(word.capitalize() if i == 0 or r > 0.97 else word)
            if rng.random() < 0.08:
                parts[-1] += rng.choice([".", ",", ";", "!", "?", ":"])
            if rng.random() < 0.01:
                parts[-1] += "\n\n"
        doc = " ".join(parts)
        docs.append(doc)
        total += len(doc.encode("utf-8"))
    return docs


def _batched(tok, docs, cleaner, plan):
    from dswb.engine.data.corpus.pipeline import tokenize_docs

    cleaned = clean_batch(docs, cleaner)
    return [s for per_doc in tokenize_docs(tok, cleaned, BATCH, plan) for s in per_doc]


def _one_by_one(tok, docs, cleaner, plan):
    from dswb.engine.data.corpus.pipeline import doc_samples

    bos, eos = tok.bos_token_id, tok.eos_token_id
    out = []
    for doc in docs:
        ids = tok.encode(cleaner(doc), add_special_tokens=False)
        out.extend(doc_samples(ids, bos, eos, plan))
    return out


def _timed_run(fn, make_tok, *args) -> tuple[list, float]:
    """One timed run with a fresh tokenizer (empty BPE word cache)."""
    tok = make_tok()
    start = time.perf_counter()
    result = fn(tok, *args)
    return result, time.perf_counter() - start


@contextmanager
def _parallelism(on: bool):
    """TOKENIZERS_PARALLELISM on/off for the block (tokenizers reads it on every call)."""
    old = os.environ.get(PARALLELISM)
    os.environ[PARALLELISM] = "true" if on else "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PARALLELISM, None)
        else:
            os.environ[PARALLELISM] = old


PATHS = (("one_by_one", "one at a time", _one_by_one, False),
         ("batched_1_thread", "batched, 1 thread", _batched, False),
         ("batched_parallel", "batched, parallel", _batched, True))


def _scenario(docs: list[str], make_tok, cleaner, plan, repeats: int) -> dict:
    """Best-of-`repeats` seconds per path; the paths take turns so they share the machine's load."""
    mbytes = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    best = {name: float("inf") for name, *_ in PATHS}
    clean_s, reference = float("inf"), None
    for _ in range(repeats):
        clean_s = min(clean_s, _timed_run(lambda _tok: clean_batch(docs, cleaner), make_tok)[1])
        for name, _label, fn, parallel in PATHS:
            with _parallelism(parallel):
                samples, seconds = _timed_run(fn, make_tok, docs, cleaner, plan)
            best[name] = min(best[name], seconds)
            reference = samples if reference is None else reference
            if samples != reference:
                raise RuntimeError(f"data bench: {name} tokenization disagrees with one-at-a-time")
    out = {"docs": len(docs), "mb": round(mbytes, 3), "tokens": sum(len(s) for s in reference),
           "samples": len(reference), "clean_only_s": round(clean_s, 3), "tokens_equal": True}
    for name, *_ in PATHS:
        out[name] = {"seconds": round(best[name], 3), "mb_per_s": round(mbytes / best[name], 2),
                     "speedup": round(best["one_by_one"] / best[name], 2)}
    return out


def tokenization_paths(quick: bool) -> dict:
    from dswb.engine.data.corpus.pipeline import chunk_plan
    from dswb.engine.data.records.tokenizer import tokenizer_from_json, tokenizer_json, train_bpe_tokenizer

    mb, repeats = (1.0, 1) if quick else (4, 3)
    long_docs = synthetic_corpus(int(mb * 1e6), seed=0, median_words=250)
    short_docs = synthetic_corpus(int(mb * 1e6), seed=1, median_words=25)
    cleaner = make_cleaner()
    start = time.perf_counter()
    tok = train_bpe_tokenizer(clean_batch(long_docs[: max(1, len(long_docs) // 4)], cleaner), 4096)
    train_s = time.perf_counter() - start
    serialized = tokenizer_json(tok)
    make_tok = lambda: tokenizer_from_json(serialized)  # noqa: E731
    plan = chunk_plan(512, 50, 256, 512, has_bos=True)
    return {
        "env_parallelism": os.environ.get(PARALLELISM, "unset"),
        "vocab": len(tok), "bpe_train_s": round(train_s, 3), "batch_size": BATCH, "repeats": repeats,
        "scenarios": {
            "long documents": _scenario(long_docs, make_tok, cleaner, plan, repeats),
            "short documents": _scenario(short_docs, make_tok, cleaner, plan, repeats),
        },
    }


# -- corpora and subprocesses ----------------------------------------------------------------

def write_corpus(path: Path, mb: float, seed: int = 0) -> dict:
    """A JSONL corpus of about `mb` MB: a pool of synthetic documents, each written with a unique
    prefix (so none is a duplicate), streamed to disk."""
    pool = synthetic_corpus(4_000_000, seed=seed, median_words=120)
    target, written, n = int(mb * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            line = json.dumps({"text": f"Record {n}. {pool[n % len(pool)]}"}, ensure_ascii=False) + "\n"
            fh.write(line)
            written += len(line.encode("utf-8"))
            n += 1
    return {"path": str(path), "mb": round(written / 1e6, 2), "docs": n}


def save_tokenizer(directory: Path, seed: int = 0) -> str:
    """A byte-level BPE (2048 tokens) trained on a 2 MB sample, saved as a tokenizer directory."""
    from dswb.engine.data.records.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(clean_batch(synthetic_corpus(2_000_000, seed=seed, median_words=120), make_cleaner()),
                              2048)
    tok.save_pretrained(directory)
    return str(directory)


def data_overrides(corpus: str, tokenizer: str, cache: str, workers: int, *extra: str) -> list[str]:
    return ["data.source=files", f"data.paths={json.dumps([corpus])}", f"model.tokenizer={json.dumps(tokenizer)}",
            f"data.cache_dir={json.dumps(cache)}", f"data.workers={workers}", "model.size=tiny",
            "model.max_seq_len=256", "data.chunk_size=256", "data.chunk_overlap=0", "data.min_chunk=64",
            "data.val_fraction=0.01", *extra]


def _peak_mb() -> dict:
    """Peak RSS of this process and of its largest (finished) child, and CPU seconds of each side
    (CPU time is a fairer measure than wall time on a shared machine)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"peak_rss_mb": round(own.ru_maxrss / 1024, 1), "worker_peak_rss_mb": round(children.ru_maxrss / 1024, 1),
            "cpu_s": round(own.ru_utime + own.ru_stime, 2), "worker_cpu_s": round(children.ru_utime + children.ru_stime, 2)}


def child(kind: str, args: dict) -> dict:
    """What a measuring subprocess does (`python -m dswb.bench.data KIND JSON`)."""
    started = time.perf_counter()
    from dswb.config import load_config

    if kind == "prepare":
        from dswb.engine.data.corpus.pipeline import prepare_data

        config = load_config(None, args["overrides"])
        imported = time.perf_counter()
        data = prepare_data(config, Path(tempfile.gettempdir()))
        r = data.report
        return {"seconds": round(time.perf_counter() - imported, 3), "report_seconds": r["seconds"],
                "documents": r["documents"], "tokens": r["tokens"], "input_mb": r["input_mb"],
                "samples": r["chunks"], "cache_hit": data.stats["cache_hit"], **_peak_mb()}
    if kind == "first_batch":
        from dswb.engine.data.corpus.pipeline import prepare_data
        from dswb.engine.data.batches.loader import BatchStream

        config = load_config(None, args["overrides"])
        imported = time.perf_counter()
        data = prepare_data(config, Path(tempfile.gettempdir()))
        stream = BatchStream(data.train, config.batching, pad_id=data.tokenizer.pad_token_id,
                             max_len=config.model.max_seq_len, seed=0)
        batch = next(stream)
        first_s = time.perf_counter() - imported
        for _ in range(args.get("batches", 1) - 1):
            next(stream)
        return {"import_s": round(imported - started, 3), "first_batch_s": round(first_s, 3),
                "cache_hit": data.stats["cache_hit"], "batch_tokens": batch.n_real, **_peak_mb()}
    if kind == "train":
        from dswb.engine.runner import run_training
        from dswb.rundir.layout import create_run_dir

        config = load_config(None, args["overrides"])
        paths = create_run_dir(Path(args["run_dir"]))
        code = run_training(config, paths)
        return {"exit_code": code, "seconds": round(time.perf_counter() - started, 3), **_peak_mb()}
    if kind == "datasets_map":
        os.environ["HF_DATASETS_CACHE"] = args["cache"]
        import datasets
        from transformers import AutoTokenizer

        datasets.disable_progress_bars()
        tok = AutoTokenizer.from_pretrained(args["tokenizer"], local_files_only=True)
        imported = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=args["corpus"], split="train", cache_dir=args["cache"])
        loaded = time.perf_counter()
        out = ds.map(lambda b: tok(b["text"], add_special_tokens=False), batched=True, num_proc=args["num_proc"],
                     remove_columns=["text"], load_from_cache_file=False)
        done = time.perf_counter()
        return {"load_s": round(loaded - imported, 3), "map_s": round(done - loaded, 3),
                "seconds": round(done - imported, 3), "rows": len(out), **_peak_mb()}
    raise ValueError(kind)


def _subprocess(kind: str, args: dict, timeout: float = 3600) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "dswb.bench.data", kind, json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {kind} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _mb_s(mb: float, seconds: float) -> float:
    return round(mb / seconds, 2) if seconds > 0 else 0.0


def workers_scaling(root: Path, corpus: dict, tokenizer: str) -> dict:
    n = max(2, _cores())
    rows = {}
    for workers in (1, n):
        r = _subprocess("prepare", {"overrides": data_overrides(corpus["path"], tokenizer, str(root / f"cache-w{workers}"),
                                                               workers)})
        tok_s = r["report_seconds"].get("tokenize_s", 0)
        rows[str(workers)] = {**r, "mb_per_s": _mb_s(corpus["mb"], r["seconds"]),
                              "read_mb_per_s": _mb_s(corpus["mb"], r["report_seconds"].get("read_s", 0)),
                              "tokenize_mb_per_s": _mb_s(corpus["mb"], tok_s)}
    one, many = rows["1"], rows[str(n)]
    return {"corpus_mb": corpus["mb"], "docs": corpus["docs"], "workers": n, "rows": rows,
            "speedup": round(one["seconds"] / many["seconds"], 2) if many["seconds"] else 0.0,
            "tokenize_speedup": round(one["report_seconds"].get("tokenize_s", 0)
                                      / max(1e-9, many["report_seconds"].get("tokenize_s", 0)), 2)}


def against_datasets(root: Path, corpus: dict, tokenizer: str) -> dict:
    try:
        import datasets  # noqa: F401
    except ImportError:
        return {"skipped": "datasets is not installed (pip install 'dswb[hf-datasets]')"}
    n = max(2, _cores())
    hf = _subprocess("datasets_map", {"corpus": corpus["path"], "tokenizer": tokenizer, "cache": str(root / "hf-cache"),
                                      "num_proc": n})
    plain = _subprocess("prepare", {"overrides": data_overrides(corpus["path"], tokenizer, str(root / "cache-plain"), n,
                                                                "data.clean=false", "data.dedup=false")})
    return {"num_proc": n, "corpus_mb": corpus["mb"],
            "datasets_map": {**hf, "mb_per_s": _mb_s(corpus["mb"], hf["seconds"])},
            "dswb_no_clean_no_dedup": {**plain, "mb_per_s": _mb_s(corpus["mb"], plain["seconds"])},
            "speedup": round(hf["seconds"] / plain["seconds"], 2) if plain["seconds"] else 0.0}


def scale(root: Path, sizes: tuple[float, float], tokenizer: str, steps: int) -> dict:
    n = max(2, _cores())
    out = []
    for k, mb in enumerate(sizes):
        corpus = write_corpus(root / f"scale-{k}.jsonl", mb, seed=10 + k)
        cache = str(root / f"scale-cache-{k}")
        overrides = data_overrides(corpus["path"], tokenizer, cache, n)
        prep = _subprocess("prepare", {"overrides": overrides})
        first = _subprocess("first_batch", {"overrides": overrides})
        train_overrides = overrides + ["batching.max_tokens=4096", f"train.steps={steps}", "train.warmup_steps=2",
                                       "eval.every=0", "eval.max_batches=2", "eval.task_samples=0",
                                       "checkpoint.every=0", "run.threads=2", f"run.name=bench-{k}"]
        train = _subprocess("train", {"overrides": train_overrides, "run_dir": str(root / f"run-{k}")})
        out.append({"corpus_mb": corpus["mb"], "docs": corpus["docs"], "prepare": prep, "first_batch": first,
                    "train": train})
        Path(corpus["path"]).unlink(missing_ok=True)
    growth = out[1]["train"]["peak_rss_mb"] - out[0]["train"]["peak_rss_mb"]
    return {"sizes": out, "train_rss_growth_mb": round(growth, 1), "goal_train_rss_growth_mb": 200,
            "prepare_rss_growth_mb": round(out[1]["prepare"]["peak_rss_mb"] - out[0]["prepare"]["peak_rss_mb"], 1),
            "goal_prepare_peak_mb": 1500}


def run(quick: bool = False) -> dict:
    result = {"cores": _cores(), "quick": quick, "tokenization_paths": tokenization_paths(quick)}
    with tempfile.TemporaryDirectory(prefix="dswb-bench-data-") as tmp:
        root = Path(tmp)
        tokenizer = save_tokenizer(root / "tokenizer")
        corpus = write_corpus(root / "corpus.jsonl", 6 if quick else 64)
        result["workers"] = workers_scaling(root, corpus, tokenizer)
        result["datasets"] = against_datasets(root, corpus, tokenizer)
        result["scale"] = scale(root, (8, 40) if quick else (200, 2000), tokenizer, steps=10 if quick else 40)
    return result


def _paths_table(result: dict) -> list[str]:
    lines = [f"data bench: clean + tokenize + chunk (512/50/256), BPE vocab {result['vocab']} "
             f"(trained in {result['bpe_train_s']} s), best of {result['repeats']}, "
             f"TOKENIZERS_PARALLELISM in this process: {result['env_parallelism']}",
             f"{'corpus':<17}{'path':<20}{'docs':>7}{'MB':>7}{'tokens':>9}{'seconds':>9}{'MB/s':>8}{'speedup':>9}"]
    for corpus, r in result["scenarios"].items():
        for path, label, *_ in PATHS:
            p = r[path]
            lines.append(f"{corpus:<17}{label:<20}{r['docs']:>7}{r['mb']:>7.2f}{r['tokens']:>9}"
                         f"{p['seconds']:>9.2f}{p['mb_per_s']:>8.2f}{p['speedup']:>8.2f}x")
        lines.append(f"{'':<17}(cleaning alone {r['clean_only_s']:.2f} s of each; samples identical: {r['tokens_equal']})")
    lines.append(f"batched = {result['batch_size']} documents per fast-tokenizer call; speedup vs one at a time")
    return lines


def format_table(result: dict) -> str:
    if "scenarios" in result:  # the tokenization-paths section alone
        return "\n".join(_paths_table(result))
    lines = _paths_table(result["tokenization_paths"])
    w = result["workers"]
    lines += ["", f"preparation of a {w['corpus_mb']} MB JSONL corpus ({w['docs']} documents; clean + dedup + "
                  f"tokenize + chunk), {result['cores']} cores:",
              f"  {'workers':<9}{'seconds':>9}{'MB/s':>8}{'read MB/s':>11}{'tok MB/s':>10}{'peak RSS':>10}{'worker RSS':>12}"]
    for workers, r in w["rows"].items():
        lines.append(f"  {workers:<9}{r['seconds']:>9.2f}{r['mb_per_s']:>8.2f}{r['read_mb_per_s']:>11.2f}"
                     f"{r['tokenize_mb_per_s']:>10.2f}{r['peak_rss_mb']:>9.0f}M{r['worker_peak_rss_mb']:>11.0f}M")
    lines.append(f"  speedup {w['workers']} workers vs 1: {w['speedup']:.2f}x overall, {w['tokenize_speedup']:.2f}x "
                 f"tokenize phase (goal >= 1.7x with 2 workers on 2 quiet cores)")
    lines.append("  CPU seconds (main + workers): " + ", ".join(
        f"{k} worker(s) {r['cpu_s']:.1f} + {r['worker_cpu_s']:.1f}" for k, r in w["rows"].items()))
    d = result["datasets"]
    if "skipped" in d:
        lines.append(f"datasets.map: skipped ({d['skipped']})")
    else:
        hf, ds = d["datasets_map"], d["dswb_no_clean_no_dedup"]
        lines += [f"against datasets.map(batched=True, num_proc={d['num_proc']}), same corpus and tokenizer:",
                  f"  datasets load_dataset + map  {hf['seconds']:8.2f} s  {hf['mb_per_s']:6.2f} MB/s  "
                  f"(load {hf['load_s']:.1f} s, map {hf['map_s']:.1f} s, peak RSS {hf['peak_rss_mb']:.0f} MB)",
                  f"  dswb prepare (no clean/dedup) {ds['seconds']:7.2f} s  {ds['mb_per_s']:6.2f} MB/s  "
                  f"(peak RSS {ds['peak_rss_mb']:.0f} MB)",
                  f"  dswb / datasets: {d['speedup']:.2f}x (goal > 1)"]
    sc = result["scale"]
    lines += ["peak RSS at two corpus sizes (subprocesses; training: tiny model, 256-token samples):",
              f"  {'corpus':>9}{'docs':>10}{'prep s':>8}{'prep RSS':>10}{'worker':>8}{'train RSS':>11}"
              f"{'1st batch':>11}{'(import)':>10}"]
    for s in sc["sizes"]:
        p, t, f = s["prepare"], s["train"], s["first_batch"]
        lines.append(f"  {s['corpus_mb']:>7.0f}MB{s['docs']:>10}{p['seconds']:>8.1f}{p['peak_rss_mb']:>9.0f}M"
                     f"{p['worker_peak_rss_mb']:>7.0f}M{t['peak_rss_mb']:>10.0f}M{f['first_batch_s']:>10.2f}s"
                     f"{f['import_s']:>9.1f}s")
    lines.append(f"  training RSS growth {sc['train_rss_growth_mb']:+.0f} MB (goal within {sc['goal_train_rss_growth_mb']} MB); "
                 f"preparation RSS growth {sc['prepare_rss_growth_mb']:+.0f} MB (goal: peak < {sc['goal_prepare_peak_mb']} MB)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], json.loads(sys.argv[2]))))
