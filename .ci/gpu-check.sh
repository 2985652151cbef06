#!/usr/bin/env bash
# GPU checks for a lent CUDA machine (not part of CI, which has no GPU). Run from the repo root:
#   OUT=/tmp/gpu-out bash .ci/gpu-check.sh
# Uses the machine's own torch/transformers; dswb runs from the source tree (PYTHONPATH).
set -uo pipefail
OUT=${OUT:-/tmp/dswb-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1
py=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"

echo "== 1. smoke preset on CUDA (bf16 autocast)"
timeout 120 $py -m dswb run presets/smoke.toml --runs-root "$OUT/runs" --run-dir "$OUT/runs/smoke" --plain --set run.device=cuda | tail -4

echo "== 2. demo preset on CUDA"
timeout 180 $py -m dswb run presets/demo.toml --runs-root "$OUT/runs" --run-dir "$OUT/runs/demo" --plain | grep -E "eval|finished|failed|error"

echo "== 3. a real corpus path: BPE tokenizer, small and base models, bf16, 8192-token batches"
$py - <<'PY'
import random, pathlib, os
random.seed(0)
words = [''.join(random.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(random.randint(2, 9))) for _ in range(3000)]
out = pathlib.Path(os.environ["OUT"]) / "corpus"; out.mkdir(exist_ok=True)
for i in range(40):
    doc = ' '.join(random.choice(words) for _ in range(random.randint(200, 3000)))
    (out / f"doc{i}.txt").write_text(doc + ' <b>tag</b> http://example.com/x\n')
PY
for size in small base; do
  timeout 200 $py -m dswb run --runs-root "$OUT/runs" --run-dir "$OUT/runs/$size" --plain \
    --set data.source=files --set "data.paths=['$OUT/corpus']" --set model.size=$size --set model.vocab_size=4096 \
    --set train.steps=60 --set train.warmup_steps=10 --set eval.every=30 --set eval.task_samples=0 \
    --set checkpoint.every=30 --set monitor.system_every_s=0.5 | grep -E "step (1|30|60)/|eval|finished|failed|error"
done

echo "== 4. event/status checks"
$py - <<'PY'
import json, os, pathlib
from dswb.rundir import read_events, read_status
for name in ["smoke", "demo", "small", "base"]:
    run = pathlib.Path(os.environ["OUT"]) / "runs" / name
    st = read_status(run / "status.json") or {}
    ev = read_events(run / "events.jsonl")
    sysm = [e["metrics"] for e in ev if e["kind"] == "system"]
    met = [e["metrics"] for e in ev if e["kind"] == "metrics"]
    evals = [e["metrics"] for e in ev if e["kind"] == "eval"]
    tps = sorted(m["tokens_per_s"] for m in met[len(met)//2:])
    print(name, st.get("state"), "steps", st.get("step"), "median tok/s %.0f" % tps[len(tps)//2] if tps else "",
          "first/last loss %.3f/%.3f" % (met[0]["loss"], met[-1]["loss"]) if met else "", "evals", evals[-2:])
    print("   system keys:", sorted(sysm[-1]) if sysm else None, {k: sysm[-1][k] for k in ("gpu_util_pct", "gpu_mem_used_mb", "gpu_temp_c", "cuda_peak_mb") if sysm and k in sysm[-1]})
PY

echo "== 5. final model loads with transformers"
$py -c "
from transformers import AutoModelForCausalLM, AutoTokenizer; import os
p=os.environ['OUT']+'/runs/base/final/pretrain'
m=AutoModelForCausalLM.from_pretrained(p); t=AutoTokenizer.from_pretrained(p); print('loaded', type(m).__name__, sum(x.numel() for x in m.parameters()), len(t))"

echo "== 6. bench loop on CUDA"
timeout 240 $py -m dswb bench loop --json "$OUT/bench-loop-gpu.json"
rm -rf "$OUT/runs" "$OUT/corpus"
