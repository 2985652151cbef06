#!/usr/bin/env bash
# GPU checks for a lent CUDA machine (not part of CI, which has no GPU). Run from the repo root:
#   OUT=/tmp/gpu-out bash .ci/gpu-check.sh [all|base|fp8|rl|lora]   (default: all)
# base: sections 1-6 (training on CUDA, events, final model, bench loop; 6b: lm-eval local tasks).
# rl:   sections 11-12 (PPO and GRPO iteration by phase on CUDA, the rollout sampler vs generate).
# lora: section 13 (peak allocated VRAM of SFT on a random base-size Llama: full vs LoRA vs QLoRA NF4);
#       needs peft and bitsandbytes (carry their wheels and `pip install --no-deps` them first; without
#       bitsandbytes QLoRA is left out, without peft the section is skipped). About 2 min.
# fp8:  sections 7-10 (FP8 numerics on CUDA, FP8 + compile training and resume, MFU, bench fp8 --quick);
#       estimated 6-9 min on an H100/H200 (not yet measured: most of it is torch.compile).
# Every section has its own timeout, so one hang cannot eat the machine's time. With a 10-minute
# limit per command, run `base` and `fp8` as two commands, or set FP8_BENCH=full for the full bench.
# Uses the machine's own torch/transformers; dswb runs from the source tree (PYTHONPATH). torchao is
# compared when importable (carry its wheel and `pip install --no-deps` it first if wanted).
# CHECK_DEVICE=cpu bash .ci/gpu-check.sh fp8 is a dry run of the fp8 sections on a CPU (toy timings);
# CHECK_DEVICE=cpu bash .ci/gpu-check.sh lora one of the lora section (the small model, RSS only).
set -uo pipefail
WHAT=${1:-all}
OUT=${OUT:-/tmp/dswb-gpu}
mkdir -p "$OUT"
export CHECK_DEVICE=${CHECK_DEVICE:-cuda}
export OUT PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"

if [[ $WHAT == all || $WHAT == base ]]; then
echo "== 1. smoke preset on CUDA (bf16 autocast)"
timeout 120 $py -m dswb run presets/smoke.toml --runs-root "$OUT/runs" --run-dir "$OUT/runs/smoke" --plain --set run.device=cuda | tail -4

echo "== 2. demo preset on CUDA: pretraining and SFT (the RL stages run in section 11)"
timeout 180 $py -m dswb run presets/demo.toml --stage pretrain --stage sft --runs-root "$OUT/runs" --run-dir "$OUT/runs/demo" --plain | grep -E "eval|finished|failed|error"

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
    mfu = sorted(m["mfu"] for m in met[len(met)//2:] if "mfu" in m)
    print("   median mfu:", "%.1f%%" % (100 * mfu[len(mfu)//2]) if mfu else "none (no peak for this GPU?)")
    print("   system keys:", sorted(sysm[-1]) if sysm else None, {k: sysm[-1][k] for k in ("gpu_util_pct", "gpu_mem_used_mb", "gpu_temp_c", "cuda_peak_mb") if sysm and k in sysm[-1]})
PY

echo "== 5. final model loads with transformers"
$py -c "
from transformers import AutoModelForCausalLM, AutoTokenizer; import os
p=os.environ['OUT']+'/runs/base/final/pretrain'
m=AutoModelForCausalLM.from_pretrained(p); t=AutoTokenizer.from_pretrained(p); print('loaded', type(m).__name__, sum(x.numel() for x in m.parameters()), len(t))"

echo "== 6. bench loop on CUDA"
timeout 240 $py -m dswb bench loop --json "$OUT/bench-loop-gpu.json"

echo "== 6b. lm-eval (docs/lm-eval.md): the local test tasks on the demo's SFT model (a run: adds an eval event)"
echo "   and on the BPE base model of section 3 (--limit 20); offline, bf16 on CUDA"
if ! $py -c "import lm_eval" 2>/dev/null; then
  echo "skipped: lm-eval is not installed (pip install a carried lm-eval wheel and its dependencies)"
else
  timeout 180 $py -m dswb eval "$OUT/runs/demo:sft" --tasks dswb_addition_gen,dswb_addition_mc \
    --include tests/data/lm_eval_tasks --device cuda --batch-size 32 --json "$OUT/lm-eval-demo.json" 2>/dev/null
  timeout 180 $py -m dswb eval "$OUT/runs/base/final/pretrain" --tasks dswb_addition_mc --limit 20 \
    --include tests/data/lm_eval_tasks --device cuda 2>/dev/null
  tail -n 1 "$OUT/runs/demo/events.jsonl" | cut -c1-300
fi
rm -rf "$OUT/runs" "$OUT/corpus"
fi

if [[ $WHAT == all || $WHAT == fp8 ]]; then
echo "== 7. FP8 numerics tests (CPU tests, on this machine's torch)"
timeout 150 $py -m pytest -q -x -m "not slow" -p no:cacheprovider tests/test_fp8_quantize.py tests/test_fp8_gemm.py \
  tests/test_fp8_linear.py tests/test_fp8_convert.py tests/test_fp8_stats.py tests/test_fp8_torchao.py \
  tests/test_mfu.py 2>&1 | tail -3

echo "== 8. FP8 on CUDA: what scaled_mm runs here, agreement with the emulation, layouts, gradients"
timeout 150 $py - <<'PY'
import os
import torch
from dswb.engine.fp8.backends import resolve_gemms
from dswb.engine.fp8.gemm import EmulatedGemm, Operand, ScaledMmGemm, gemm_kind, probe_scaled_mm
from dswb.engine.fp8.linear import Fp8Linear
from dswb.engine.fp8.quantize import quantize
from dswb.engine.fp8.recipe import Fp8Recipe
dev = torch.device(os.environ["CHECK_DEVICE"])
kinds, why = probe_scaled_mm(dev.type, dev.index)
print("scaled_mm kinds:", {k: str(v) for k, v in kinds.items()}, "why not:", why)
gen = torch.Generator().manual_seed(0)
x = torch.randn(2048, 4096, generator=gen).to(dev); w = (torch.randn(1024, 4096, generator=gen) / 64).to(dev)
sm = ScaledMmGemm(kinds)
for ga, gb in [("tensor", "tensor"), ("row", "row"), ("tile", "block"), ("tile", "tile"), ("block", "tile")]:
    if not sm.supports(ga, gb):
        print(f"  {ga} x {gb}: not on this GPU"); continue
    a, b = Operand(*quantize(x, ga), ga), Operand(*quantize(w, gb), gb)
    ref = EmulatedGemm()(a, b, torch.float32)
    got = sm(a, b, torch.float32)
    err = float((got - ref).norm() / ref.norm())
    print(f"  {ga} x {gb} ({gemm_kind(ga, gb)}): scaled_mm vs emulated rel err {err:.2e}", "OK" if err < 1e-2 else "FAIL")
f8 = torch.float8_e4m3fn
for name, fn in [("row-major b", lambda: torch._scaled_mm(torch.zeros(64, 128, device=dev, dtype=f8), torch.zeros(128, 32, device=dev, dtype=f8), torch.ones((), device=dev), torch.ones((), device=dev), out_dtype=torch.bfloat16)),
                 ("K=120", lambda: torch._scaled_mm(torch.zeros(64, 120, device=dev, dtype=f8), torch.zeros(32, 120, device=dev, dtype=f8).t(), torch.ones((), device=dev), torch.ones((), device=dev), out_dtype=torch.bfloat16))]:
    try:
        fn(); print(f"  layout rule {name}: accepted", "(FAIL: CUDA should reject it)" if dev.type == "cuda" else "(a CPU is lenient)")
    except RuntimeError as exc:
        print(f"  layout rule {name}: rejected OK ({str(exc).splitlines()[0][:80]})")
torch.manual_seed(0)
lin = torch.nn.Linear(4096, 1024, bias=False).to(dev)
xx = torch.randn(4, 512, 4096, device=dev, requires_grad=True); g = torch.randn(4, 512, 1024, device=dev)
y = lin(xx); y.backward(g); ref = (y.detach(), xx.grad.clone(), lin.weight.grad.clone())
for recipe in [Fp8Recipe(), Fp8Recipe("row", "row", "row"), Fp8Recipe("tensor", "tensor", "tensor")]:
    gemms, line = resolve_gemms("auto", recipe, dev)
    layer = Fp8Linear.from_linear(lin, recipe, gemms)
    xx.grad = None; lin.weight.grad = None
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        y8 = layer(xx)
    y8.backward(g.bfloat16())
    rel = lambda a, b: float((a.float() - b).norm() / b.norm())
    errs = (rel(y8.detach(), ref[0]), rel(xx.grad, ref[1]), rel(lin.weight.grad, ref[2]))
    print(f"  {recipe.describe()}: y/dx/dW rel err {errs[0]:.3f}/{errs[1]:.3f}/{errs[2]:.3f}",
          "OK" if max(errs) < 0.06 else "FAIL", "|", line)
PY

echo "== 9. FP8 training on CUDA (smoke preset; auto backend; then with torch.compile), resume, final model"
timeout 150 $py -m dswb run presets/smoke.toml --runs-root "$OUT/runs" --run-dir "$OUT/runs/fp8" --plain \
  --set run.device=$CHECK_DEVICE --set fp8.enabled=true --set fp8.stats_every=5 --set fp8.shadow_every=10 --set train.steps=40 | tail -2
timeout 120 $py - <<'PY'
import os, pathlib
from safetensors.torch import load_file
from dswb.engine.checkpoint.layout import latest_checkpoint
from dswb.rundir import read_status, send_command
from tests.helpers import run_in_process, tiny_config
class StopAt:   # asks the run to stop at step 6 through its control file, as `dswb runs stop` does
    def __init__(self, run_dir): self.run_dir = run_dir
    def on_metrics(self, stage, step, total, metrics, eta):
        if step == 6: send_command(self.run_dir, "stop")
    def on_event(self, event): pass
    def on_stage_start(self, *a): pass
    def on_stage_end(self, *a): pass
run = pathlib.Path(os.environ["OUT"]) / "runs" / "fp8-resume"
cfg = tiny_config(f"run.device={os.environ['CHECK_DEVICE']}", "fp8.enabled=true", "fp8.scaling=delayed", "fp8.activations=tensor",
                  "fp8.weights=tensor", "fp8.gradients=tensor", "fp8.min_dim=16", "checkpoint.every=0")
code = run_in_process(cfg, run, reporter=StopAt(run))
ckpt = latest_checkpoint(run / "checkpoints" / "pretrain")
hist = {k: v for k, v in load_file(str(ckpt.path / "model.safetensors")).items() if k.endswith("fp8_amax_history")}
code2 = run_in_process(cfg, run, resume=True)
print("FP8 resume on CUDA: stop ->", code, "at step", ckpt.step, "| checkpoint amax histories:", len(hist),
      "non-zero:", sum(int(v.abs().sum() > 0) for v in hist.values()), "| resume ->", code2, read_status(run / "status.json")["state"])
PY
if [[ $CHECK_DEVICE == cuda ]]; then
  timeout 300 $py -m dswb run presets/smoke.toml --runs-root "$OUT/runs" --run-dir "$OUT/runs/fp8c" --plain \
    --set run.device=cuda --set fp8.enabled=true --set train.compile=true --set train.steps=30 | tail -2
else
  echo "torch.compile run skipped on $CHECK_DEVICE (minutes of compiling on a CPU)"
fi
$py - <<'PY'
import os, pathlib
from dswb.rundir import read_events, read_status
from transformers import AutoModelForCausalLM
for name in ["fp8", "fp8c"]:
    run = pathlib.Path(os.environ["OUT"]) / "runs" / name
    if not (run / "events.jsonl").is_file():
        continue
    st = read_status(run / "status.json") or {}
    ev = read_events(run / "events.jsonl")
    fp8 = [e for e in ev if e["kind"] == "fp8"]
    met = [e["metrics"] for e in ev if e["kind"] == "metrics"]
    logs = [e["message"] for e in ev if e["kind"] == "log" and ("FP8" in e["message"] or "MFU" in e["message"] or "compile" in e["message"])]
    print(name, st.get("state"), st.get("step"), "fp8 events", len(fp8), "alerts", [e["code"] for e in ev if e["kind"] == "alert"])
    for line in logs:
        print("   ", line[:220])
    if fp8:
        last = fp8[-1]
        print("   last fp8 event groups:", {g: {k: v[k] for k in ("amax", "saturation_pct", "underflow_pct")} for g, v in last["layers"].items()}, "shadow", last.get("shadow"))
    if met:
        print("   last metrics:", {k: round(v, 5) for k, v in met[-1].items() if k in ("loss", "tokens_per_s", "tflops", "mfu") or k.startswith("fp8")})
    final = run / "final" / "pretrain"
    if final.is_dir():
        m = AutoModelForCausalLM.from_pretrained(final)
        print("   final model loads:", type(m).__name__, "fp8 keys:", [k for k in m.state_dict() if "fp8" in k][:3])
PY

echo "== 10. bench fp8 (layer: FP8 vs BF16, eager and compiled; ~1B Llama: tokens/s and MFU, FP8 on/off)"
if [[ ${FP8_BENCH:-quick} == full ]]; then bench_args=(); else bench_args=(--quick); fi
timeout 420 $py -m dswb bench fp8 "${bench_args[@]}" --json "$OUT/bench-fp8-gpu.json"
rm -rf "$OUT/runs"
fi

if [[ $WHAT == all || $WHAT == rl ]]; then
echo "== 11. bench rl on CUDA (PPO and GRPO: generation, scoring, reference log-probs, update)"
timeout 240 $py -m dswb bench rl --quick --json "$OUT/bench-rl-gpu.json"

echo "== 12. bench rollout on CUDA (sampler vs model.generate, batch 1/16/64)"
timeout 180 $py -m dswb bench rollout --quick --json "$OUT/bench-rollout-gpu.json"
fi

if [[ $WHAT == all || $WHAT == lora ]]; then
echo "== 13. LoRA and QLoRA memory: peak allocated VRAM (and RSS) of 5 SFT steps on a random base-size Llama"
if ! $py -c "import peft" 2>/dev/null; then
  echo "skipped: peft is not installed (pip install --no-deps a carried peft wheel)"
elif [[ $CHECK_DEVICE == cuda ]] && ! $py -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "skipped: no CUDA device (CHECK_DEVICE=cpu for a dry run on the CPU)"
else
  # run.device is "auto": the runs train on the GPU where there is one; the dry run takes the small model
  if [[ $CHECK_DEVICE == cuda ]]; then lora_args=(); else lora_args=(--quick); fi
  timeout 420 $py -m dswb bench lora --parts memory "${lora_args[@]}" --json "$OUT/bench-lora-memory.json"
fi
fi
