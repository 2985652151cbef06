"""`dswb bench mtp`: what DeepSeek-V3's multi-token prediction (`[mtp]`, docs/mtp.md) does to pretraining,
and how often its draft of the next-next token would be accepted.

The same model (`moe-tiny` by default, or `tiny`) is pretrained on the same data (the built-in addition
task: `"437+386=0823"`, whose answer digits are determined by the prompt, so a second token ahead is
predictable there and not in the random operands) for the same steps, with `[mtp] depth = 1` and
without, once per seed (`--trials`, default 3; seed s is `run.seed = s`, the same for both sides). Reported
per seed and as the mean over seeds:
- `val_loss`: the main next-token loss on the held-out split at every evaluation step (the stage's own
  `eval` events: equal steps, equal batches), and `step_s`, the median seconds per training step;
- for the MTP side, on the held-out batches (teacher-forced, every position i with a target at i+2):
  `accept_true`, the fraction where the depth-1 head's argmax is the true token i+2 (the "acceptance rate
  of the second token prediction" in DeepSeek-V3's report, section 5.4.3); `accept_main`, the fraction
  where it equals the main model's own greedy prediction at position i+1, which is what greedy
  speculative decoding accepts; both over all positions and over the answer's positions only (those
  after `=`), and `mtp_val_loss`, the depth-1 cross-entropy.

Every training runs in this process, one after the other, on `THREADS` torch threads. `--quick`: the tiny
settings of the tests (a few steps, one seed unless `trials` says otherwise).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

THREADS = 1   # two threads on a 2-core machine that others share stall each other (as `dswb bench lora` found)
SIZES = ("moe-tiny", "tiny")
FULL = {"steps": 160, "n_train": 4000, "eval_every": 40, "max_tokens": 1024, "lr": 3e-3, "trials": 3}
QUICK = {"steps": 6, "n_train": 200, "eval_every": 3, "max_tokens": 256, "lr": 3e-3, "trials": 1}


def overrides(size: str, seed: int, mtp: bool, settings: dict, workdir: Path) -> list[str]:
    """The pretraining run of one side and seed."""
    s = settings
    return [f"model.size={size}", "model.max_seq_len=32", "data.source=task", "task.digits=3",
            f"task.n_train={s['n_train']}", "task.n_val=200", "task.n_test=10",
            f"batching.max_tokens={s['max_tokens']}",
            f"train.steps={s['steps']}", f"train.warmup_steps={max(1, s['steps'] // 20)}", f"train.lr={s['lr']}",
            "train.schedule=cosine", f"eval.every={s['eval_every']}", "eval.max_batches=4", "eval.task_samples=0",
            "checkpoint.every=0", "checkpoint.keep_last=1", f"run.seed={seed}", f"run.threads={THREADS}",
            "monitor.system_every_s=5", f"data.cache_dir={workdir / 'cache'}", f"mtp.depth={1 if mtp else 0}"]


def train(size: str, seed: int, mtp: bool, settings: dict, workdir: Path) -> dict:
    """One pretraining run: its evaluation curve, seconds per step and final model directory."""
    from dswb.config import load_config
    from dswb.engine.runner import run_training
    from dswb.rundir import create_run_dir
    from dswb.rundir.events import read_events

    config = load_config(None, overrides(size, seed, mtp, settings, workdir))
    paths = create_run_dir(workdir / f"{size}-seed{seed}-{'mtp' if mtp else 'plain'}")
    t0 = time.perf_counter()
    if run_training(config, paths) != 0:
        raise RuntimeError(f"the pretraining run failed (see {paths.log})")
    events = read_events(paths.events)
    curve = {e["step"]: e["metrics"]["val_loss"] for e in events if e["kind"] == "eval" and "val_loss" in e["metrics"]}
    steps = [e["metrics"]["step_time_s"] for e in events if e["kind"] == "metrics"]
    return {"config": config, "final": paths.final("pretrain"), "val_loss": curve,
            "step_s": statistics.median(steps) if steps else 0.0, "wall_s": time.perf_counter() - t0}


def acceptance(config, final: Path) -> dict:
    """`accept_true`, `accept_main` (all positions, and `_answer`: after `=`) and `mtp_val_loss` of the
    depth-1 head saved in `final`, on the stage's held-out batches."""
    import torch

    from dswb.engine.checkpoint.mtp import load_mtp, mtp_depth_saved
    from dswb.engine.data.corpus.pipeline import prepare_data
    from dswb.engine.eval.loss import validation_batches
    from dswb.engine.model.load import load_causal_lm
    from dswb.engine.model.mtp import MtpModules, final_hidden, mtp_loss_sum, mtp_targets

    data = prepare_data(config, Path(config.data.cache_dir), lambda line: None)
    model = load_causal_lm(final, "bench").eval()
    mtp = MtpModules(model, mtp_depth_saved(final))
    load_mtp(mtp, final)
    equals = data.tokenizer.convert_tokens_to_ids("=")
    counts = {"n": 0, "true": 0, "main": 0, "n_answer": 0, "true_answer": 0, "main_answer": 0, "ce": 0.0}
    with torch.no_grad():
        for batch in validation_batches(data.val, config, data.tokenizer.pad_token_id):
            with final_hidden(model) as hidden:
                main = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            logits = mtp(model, hidden[-1], batch.input_ids, batch.attention_mask)[0]   # [B, T-1, V]: i -> i+2
            targets = mtp_targets(batch.labels, 1)                                    # [B, T-2]
            width = targets.shape[1]
            draft, greedy = logits[:, :width].argmax(-1), main[:, 1:width + 1].argmax(-1)
            valid = targets != -100
            answer = valid & ((batch.input_ids == equals).cumsum(1)[:, 1:width + 1] > 0)
            for suffix, mask in (("", valid), ("_answer", answer)):
                counts["n" + suffix] += int(mask.sum())
                counts["true" + suffix] += int(((draft == targets) & mask).sum())
                counts["main" + suffix] += int(((draft == greedy) & mask).sum())
            counts["ce"] += float(mtp_loss_sum([logits], batch.labels)[0][0])
    rate = lambda a, n: counts[a] / max(1, counts[n])  # noqa: E731
    return {"accept_true": rate("true", "n"), "accept_main": rate("main", "n"),
            "accept_true_answer": rate("true_answer", "n_answer"),
            "accept_main_answer": rate("main_answer", "n_answer"),
            "mtp_val_loss": counts["ce"] / max(1, counts["n"]), "positions": counts["n"]}


def run(quick: bool = False, trials: int | None = None, size: str = "moe-tiny", steps: int | None = None,
        workdir: Path | None = None) -> dict:
    """Pretrain `size` with and without MTP for each of `trials` seeds (0, 1, ...); see the module docstring.
    `steps` overrides the preset's steps (evaluation every quarter of them)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}")
    settings = dict(QUICK if quick else FULL)
    if steps is not None:
        settings.update(steps=steps, eval_every=max(1, steps // 4))
    seeds = list(range(trials if trials is not None else settings["trials"]))
    with tempfile.TemporaryDirectory(prefix="dswb-bench-mtp-") as tmp:
        base = Path(workdir) if workdir is not None else Path(tmp)
        rows = []
        for seed in seeds:
            plain = train(size, seed, False, settings, base)
            with_mtp = train(size, seed, True, settings, base)
            scores = acceptance(with_mtp["config"], with_mtp["final"])
            rows.append({"seed": seed, "plain": _public(plain), "mtp": {**_public(with_mtp), **scores}})
    return {"size": size, "settings": {k: v for k, v in settings.items() if k != "trials"}, "seeds": seeds,
            "threads": THREADS, "trials": rows, "mean": _means(rows)}


def _public(side: dict) -> dict:
    return {"val_loss": {int(k): v for k, v in side["val_loss"].items()}, "step_s": side["step_s"],
            "wall_s": side["wall_s"]}


def _means(rows: list[dict]) -> dict:
    mean = lambda values: sum(values) / len(values) if values else 0.0  # noqa: E731
    out: dict = {}
    for side in ("plain", "mtp"):
        steps = sorted(rows[0][side]["val_loss"]) if rows else []
        out[side] = {"val_loss": {s: mean([r[side]["val_loss"].get(s, 0.0) for r in rows]) for s in steps},
                     "step_s": mean([r[side]["step_s"] for r in rows])}
    for key in ("accept_true", "accept_main", "accept_true_answer", "accept_main_answer", "mtp_val_loss"):
        out["mtp"][key] = mean([r["mtp"][key] for r in rows])
    return out


def format_table(result: dict) -> str:
    s, mean = result["settings"], result["mean"]
    lines = [f"dswb bench mtp: {result['size']} pretrained {s['steps']} steps on 3-digit addition, with [mtp] depth 1 "
             f"and without, seeds {', '.join(map(str, result['seeds']))} ({result['threads']} torch thread"
             f"{'s' if result['threads'] > 1 else ''})", "",
             f"{'step':>6}  {'val_loss plain':>14}  {'val_loss mtp':>12}  {'mtp - plain':>11}"]
    for step, plain in mean["plain"]["val_loss"].items():
        with_mtp = mean["mtp"]["val_loss"].get(step, float("nan"))
        lines.append(f"{step:>6}  {plain:>14.4f}  {with_mtp:>12.4f}  {with_mtp - plain:>+11.4f}")
    per_seed = "  ".join(f"seed {r['seed']}: {r['plain']['val_loss'][max(r['plain']['val_loss'])]:.4f} / "
                         f"{r['mtp']['val_loss'][max(r['mtp']['val_loss'])]:.4f}" for r in result["trials"]
                         if r["plain"]["val_loss"] and r["mtp"]["val_loss"])
    m = mean["mtp"]
    lines += [f"last val_loss plain / mtp per seed: {per_seed}",
              f"seconds per step: plain {mean['plain']['step_s']:.3f}, mtp {m['step_s']:.3f}", "",
              "depth-1 head on held-out data (position i drafts token i+2)     all positions   answer digits",
              f"  accept_true: draft == the true token i+2 (DeepSeek's rate)   {m['accept_true']:>13.1%}   "
              f"{m['accept_true_answer']:>13.1%}",
              f"  accept_main: draft == the main model's greedy token i+2      {m['accept_main']:>13.1%}   "
              f"{m['accept_main_answer']:>13.1%}",
              f"  mtp_val_loss (depth-1 cross-entropy): {m['mtp_val_loss']:.4f}"]
    return "\n".join(lines)


if __name__ == "__main__":   # python -m dswb.bench.mtp [--quick]
    import sys

    print(format_table(run(quick="--quick" in sys.argv)))
