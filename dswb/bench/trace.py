"""Behaviour traces: every number a run computed, to show that a change moved none (or which).

A trace of a run directory holds, per stage, every metric of every step, every evaluation, the
recorded samples, the batching and stage-start events and alerts, with the wall-clock fields left
out (timings, throughput, ETA, system samples), and a checksum of every tensor of every final model.
Two traces of the same preset on the same machine are equal field for field when the code computes
the same numbers; float results differ between CPUs, so a stored trace is not a test.

    python -m dswb.bench.trace run presets/demo.toml before.json     # a short seed-0 run, traced
    python -m dswb.bench.trace record runs/<id> trace.json            # any finished run
    python -m dswb.bench.trace compare before.json after.json         # exit 1 and the differences
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Short stages (5-20 steps) that still evaluate, checkpoint, resume nothing and record samples.
SHORT = ["train.steps=20", "sft.steps=15", "sft.eval_every=5", "rm.steps=15", "rm.eval_every=5", "ppo.steps=6",
         "ppo.eval_every=3", "ppo.samples_every=2", "grpo.steps=10", "grpo.eval_every=5", "grpo.samples_every=2",
         "dpo.steps=15", "dpo.eval_every=5", "eval.every=10", "eval.task_samples=50", "checkpoint.every=10",
         "monitor.log_every=1", "run.seed=0"]
WALL_CLOCK = ("timing/", "tokens_per_s", "step_time_s", "data_wait_s", "tflops", "mfu", "completion_tokens_per_s",
              "eta_s", "seconds")
KINDS = ("metrics", "eval", "samples", "batching", "stage_start", "alert", "stage_end")
PATH_FIELDS = ("source", "final_path", "path", "value_source", "reference", "cache_key")


def _clean(value, key: str = ""):
    if isinstance(value, dict):
        return {k: _clean(v, k) for k, v in value.items()
                if not any(k.startswith(w) or k == w for w in WALL_CLOCK) and k not in PATH_FIELDS}
    if isinstance(value, list):
        return [_clean(v, key) for v in value]
    return value


def tensor_digests(final_dir: Path) -> dict[str, str]:
    """`name -> sha256` of every tensor of a final model (dtype, shape and bytes)."""
    from safetensors.torch import load_file

    out = {}
    for file in sorted(final_dir.glob("*.safetensors")):
        for name, tensor in sorted(load_file(str(file)).items()):
            h = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            h.update(tensor.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
            out[name] = h.hexdigest()[:16]
    return out


def record(run_dir: Path) -> dict:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    trace: dict = {}
    for e in events:
        if e.get("kind") not in KINDS:
            continue
        body = _clean({k: v for k, v in e.items() if k not in ("t", "kind", "stage", "step")})
        trace.setdefault(e.get("stage") or "-", []).append([e["kind"], e.get("step"), body])
    finals = {p.name: tensor_digests(p) for p in sorted((run_dir / "final").glob("*")) if p.is_dir()}
    return {"events": trace, "final_tensors": finals}


def compare(a: dict, b: dict, limit: int = 20) -> list[str]:
    """Human-readable differences between two traces (empty: identical)."""
    out: list[str] = []
    for stage in sorted(set(a["events"]) | set(b["events"])):
        ea, eb = a["events"].get(stage, []), b["events"].get(stage, [])
        if len(ea) != len(eb):
            out.append(f"{stage}: {len(ea)} events vs {len(eb)}")
        for x, y in zip(ea, eb):
            if x != y:
                keys = sorted(k for k in set(x[2]) | set(y[2]) if x[2].get(k) != y[2].get(k))
                detail = ", ".join(f"{k}: {json.dumps(x[2].get(k))[:80]} vs {json.dumps(y[2].get(k))[:80]}" for k in keys[:4])
                out.append(f"{stage} {x[0]}@{x[1]} vs {y[0]}@{y[1]}: {detail}")
    for stage in sorted(set(a["final_tensors"]) | set(b["final_tensors"])):
        ta, tb = a["final_tensors"].get(stage, {}), b["final_tensors"].get(stage, {})
        differ = sorted(k for k in set(ta) | set(tb) if ta.get(k) != tb.get(k))
        if differ:
            out.append(f"final/{stage}: {len(differ)} of {len(ta)} tensors differ ({', '.join(differ[:3])} ...)")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def _load(path: str) -> dict:
    p = Path(path)
    return record(p) if p.is_dir() else json.loads(p.read_text())


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "run":
        preset, out, extra = argv[1], Path(argv[2]), argv[3:]
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "dswb", "run", preset, "--quiet", "--run-dir", f"{tmp}/run",
                   *[a for s in SHORT + extra for a in ("--set", s)]]
            subprocess.run(cmd, check=True)
            out.write_text(json.dumps(record(Path(tmp) / "run"), indent=1))
        print(f"trace written: {out}")
        return 0
    if len(argv) == 3 and argv[0] == "record":
        Path(argv[2]).write_text(json.dumps(record(Path(argv[1])), indent=1))
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        diffs = compare(_load(argv[1]), _load(argv[2]))
        print("\n".join(diffs) if diffs else "identical: every traced number and final tensor is equal")
        return 1 if diffs else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
