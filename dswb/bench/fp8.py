"""`dswb bench fp8`: FP8 against BF16 where it should pay (a Hopper GPU), and MFU of a ~1B model.

1. Layer: forward + backward of one linear, `(tokens, in, out)` = 8192x4096x4096 and
   16384x8192x8192 on a GPU, as training runs it (FP32 master weight, BF16 autocast): a plain
   `nn.Linear` against dswb's FP8 linear per tensor, per row and with DeepSeek-V3's tile/block
   scaling (backend `auto`), eager and `torch.compile`d, and torchao's tensorwise / rowwise recipes
   when torchao is installed. Per variant: ms, TFLOP/s (6 x tokens x in x out per pass), speedup over
   eager and compiled BF16, and the output's relative error against an FP32 matmul.
   Goal on an H100/H200: FP8 >= 1.3x BF16 at the largest shape.
2. Model: training steps of a ~1B-parameter Llama (hidden 2048, 16 layers, 8192 tokens per step)
   through dswb's own `prepare_model`, optimizer and `train_step`: tokens/s and MFU with FP8 off and
   on, eager and compiled. Goals: FP8 faster than compiled BF16; BF16 MFU >= 40% (torchtitan reports
   33-39% for Llama 3 8B on H100).

On a CPU the same code runs at toy sizes, without torch.compile (minutes of compiling there): it
checks that every variant runs and is correct, and its timings mean nothing (no FP8 units).
"""

from __future__ import annotations

import copy
import gc
import time

import torch

from dswb.engine.telemetry.mfu import device_peak, lookup_peak, model_flops_per_token

RECIPES = {"tensor": ("tensor", "tensor", "tensor"), "row": ("row", "row", "row"),
           "tile/block": ("tile", "block", "tile")}   # (activations, weights, gradients)
GPU_SHAPES = [(8192, 4096, 4096), (16384, 8192, 8192)]
CPU_SHAPES = [(256, 256, 512)]
MODEL_GPU = {"hidden": 2048, "inter": 8192, "layers": 16, "heads": 32, "kv": 8, "vocab": 32000, "seq": 2048, "batch": 4}
# On a CPU "bf16" runs in FP32 (run.precision auto), the baseline the FP8 emulation is checked against.
MODEL_CPU = {"hidden": 128, "inter": 384, "layers": 2, "heads": 4, "kv": 2, "vocab": 2048, "seq": 64, "batch": 4}
LAYER_GOAL, MFU_GOAL = 1.3, 0.40


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call after `warmup` calls (the first compiles, when compiled)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def _fp8_config(recipe: str, backend: str = "auto", compile_: bool = False):
    from dswb.config import load_config

    act, wt, grad = RECIPES[recipe]
    return load_config(None, ["fp8.enabled=true", f"fp8.backend={backend}", f"fp8.activations={act}",
                              f"fp8.weights={wt}", f"fp8.gradients={grad}", "fp8.min_dim=1", "fp8.multiple_of=1",
                              "fp8.skip=[]", f"train.compile={'true' if compile_ else 'false'}"])


def _torchao_available() -> bool:
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return False
    return True


def backend_summary(model: torch.nn.Module) -> str:
    """Which backend runs the forward, input-gradient and weight-gradient GEMMs, in a few words."""
    from dswb.engine.fp8 import fp8_info, fp8_layers

    layers = fp8_layers(model)
    if not layers:
        info = fp8_info(model)
        return info.backend if info else "-"
    gemms = layers[0].gemms
    names = [gemms.forward.name, gemms.dgrad.name, gemms.wgrad.name]
    if len(set(names)) == 1:
        return names[0]
    return ", ".join(f"{gemm} {name}" for gemm, name in zip(("fwd", "dgrad", "wgrad"), names))


def _layer_variants(base: torch.nn.Linear, device: torch.device) -> list[tuple[str, torch.nn.Module, str]]:
    """(name, module, backend) for each variant of one layer."""
    from dswb.engine.fp8 import apply_fp8

    out: list[tuple[str, torch.nn.Module, str]] = [("bf16 nn.Linear", base, "-")]
    recipes = [(f"dswb fp8 {recipe}", recipe, "auto") for recipe in RECIPES]
    if _torchao_available():
        recipes += [(f"torchao {recipe}wise", recipe, "torchao") for recipe in ("tensor", "row")]
    for name, recipe, backend in recipes:
        holder = torch.nn.Sequential(copy.deepcopy(base))
        apply_fp8(holder, _fp8_config(recipe, backend).fp8, device)
        out.append((name, holder, backend_summary(holder)))
    return out


def layer_bench(device: torch.device, shapes: list[tuple[int, int, int]], compile_: bool, iters: int) -> list[dict]:
    rows = []
    for tokens, k, n in shapes:
        gen = torch.Generator(device="cpu").manual_seed(0)
        base = torch.nn.Linear(k, n, bias=False)
        base.weight.data = (torch.randn(n, k, generator=gen) / k ** 0.5)
        base = base.to(device)
        x = torch.randn(tokens, k, generator=gen).to(device, torch.bfloat16).requires_grad_(True)
        grad = torch.randn(tokens, n, generator=gen).to(device, torch.bfloat16)
        reference = x.detach().float() @ base.weight.detach().float().t()
        flops = 6.0 * tokens * k * n
        times: dict[tuple[str, bool], float] = {}
        for name, module, backend in _layer_variants(base, device):
            for compiled in ([False, True] if compile_ else [False]):
                if compiled:
                    torch._dynamo.reset()
                run = torch.compile(module) if compiled else module

                def step(run=run):
                    x.grad = None
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        y = run(x)
                    y.backward(grad)
                    return y

                try:
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        y = run(x)
                    err = float((y.detach().float() - reference).norm() / reference.norm())
                    seconds = _timed(step, device, warmup=3 if compiled else 1, iters=iters)
                except Exception as exc:  # noqa: BLE001 - a variant that cannot run here is reported, not fatal
                    rows.append({"shape": f"{tokens}x{k}x{n}", "variant": name, "compiled": compiled,
                                 "backend": backend, "error": " ".join(str(exc).split())[:200]})
                    continue
                times[(name, compiled)] = seconds
                rows.append({"shape": f"{tokens}x{k}x{n}", "variant": name, "compiled": compiled, "backend": backend,
                             "ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "rel_err": err})
        for row in rows:
            if row["shape"] == f"{tokens}x{k}x{n}" and "ms" in row:
                for compiled in (False, True):
                    bf16 = times.get(("bf16 nn.Linear", compiled))
                    if bf16:
                        row[f"vs_bf16{'_compiled' if compiled else ''}"] = bf16 / (row["ms"] / 1e3)
        del x, grad, reference
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _model(sizes: dict, device: torch.device) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=sizes["vocab"], hidden_size=sizes["hidden"], intermediate_size=sizes["inter"],
                      num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"],
                      num_key_value_heads=sizes["kv"], max_position_embeddings=sizes["seq"],
                      tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(cfg)


def model_bench(device: torch.device, sizes: dict, variants: list[tuple[str, str | None, bool, str]],
                steps: int) -> list[dict]:
    """Training steps of one Llama per variant: (name, FP8 recipe or None, compiled, backend)."""
    from dswb.config import load_config
    from dswb.engine.data.batches.collate import collate_padded
    from dswb.engine.model.device import autocast_dtype
    from dswb.engine.train.optim import build_optimizer
    from dswb.engine.train.step import train_step
    from dswb.engine.train.prepare import prepare_model

    gen = torch.Generator().manual_seed(0)
    rows_of_ids = torch.randint(3, sizes["vocab"], (sizes["batch"], sizes["seq"]), generator=gen).tolist()
    batch = collate_padded(rows_of_ids, pad_id=0, max_len=sizes["seq"]).to(device)
    amp = autocast_dtype(device, "auto")
    peak = device_peak(device)
    rows = []
    for name, recipe, compiled, backend in variants:
        if recipe is None:
            cfg = load_config(None, [f"train.compile={'true' if compiled else 'false'}"])
        else:
            cfg = _fp8_config(recipe, backend, compiled)
            cfg.fp8.min_dim, cfg.fp8.multiple_of = 64, 16
            cfg.fp8.skip = ["lm_head", "*.lm_head"]
        torch._dynamo.reset()
        try:
            model = prepare_model(_model(sizes, device), cfg, device)
            optimizer = build_optimizer(model, cfg.train, device)
            flops, _ = model_flops_per_token(model, sizes["seq"])
            losses = []

            def step(model=model, optimizer=optimizer, losses=losses):
                losses.append(train_step(model, optimizer, [batch], device, amp, 1.0).loss)

            seconds = _timed(step, device, warmup=3 if compiled else 1, iters=steps)
        except Exception as exc:  # noqa: BLE001 - e.g. torchao missing, or a backend this GPU lacks
            rows.append({"variant": name, "error": " ".join(str(exc).split())[:200]})
            continue
        finally:
            model = optimizer = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        tokens_per_s = batch.n_real / seconds
        rows.append({"variant": name, "compiled": compiled, "step_ms": seconds * 1e3, "tokens_per_s": tokens_per_s,
                     "tflops": flops * tokens_per_s / 1e12,
                     "mfu": flops * tokens_per_s / 1e12 / peak.tflops if peak.tflops else None,
                     "last_loss": losses[-1]})
    measured = [r for r in rows if "tokens_per_s" in r]
    compiled_base = next((r for r in measured if r["variant"] == "bf16 compiled"), None)
    for row in measured:   # speedups over the first (high-precision, eager) variant and compiled BF16
        row["vs_base"] = row["tokens_per_s"] / measured[0]["tokens_per_s"]
        if compiled_base:
            row["vs_bf16_compiled"] = row["tokens_per_s"] / compiled_base["tokens_per_s"]
    return rows


def _model_variants(gpu: bool, quick: bool) -> list[tuple[str, str | None, bool, str]]:
    if not gpu:   # run.precision auto is FP32 on a CPU
        return [("fp32", None, False, "auto"), ("fp8 tile/block", "tile/block", False, "auto"),
                ("fp8 row", "row", False, "auto")]
    variants = [("bf16", None, False, "auto"), ("bf16 compiled", None, True, "auto"),
                ("fp8 tile/block compiled", "tile/block", True, "auto"), ("fp8 row compiled", "row", True, "auto")]
    if not quick:
        variants += [("fp8 tensor compiled", "tensor", True, "auto")]
        if _torchao_available():
            variants += [("torchao tensorwise compiled", "tensor", True, "torchao"),
                         ("torchao rowwise compiled", "row", True, "torchao")]
    return variants


def run(quick: bool = False) -> dict:
    device = _device()
    gpu = device.type == "cuda"
    threads = torch.get_num_threads()
    if not gpu:
        torch.set_num_threads(1)   # toy sizes: one thread, so a busy machine's cores do not fight
    try:
        return _run(device, gpu, quick)
    finally:
        torch.set_num_threads(threads)


def _run(device: torch.device, gpu: bool, quick: bool) -> dict:
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    known = lookup_peak(name) if gpu else None
    shapes = (GPU_SHAPES[:1] if quick else GPU_SHAPES) if gpu else CPU_SHAPES
    result = {"device": name, "torch": torch.__version__, "timings_meaningful": gpu,
              "peak_tflops": {"bf16": known[1], "fp8": known[2]} if known else None,
              "torchao": _torchao_available(),
              "layer": layer_bench(device, shapes, compile_=gpu, iters=(10 if quick else 20) if gpu else 3),
              "model": model_bench(device, MODEL_GPU if gpu else MODEL_CPU, _model_variants(gpu, quick),
                                   steps=(5 if quick else 10) if gpu else 2)}
    result["goals"] = goals(result)
    return result


def goals(result: dict) -> dict:
    """The issue's goals, read off the figures (None where a figure is missing)."""
    layer = [r for r in result["layer"] if "ms" in r]
    largest = layer[-1]["shape"] if layer else None
    fp8_speedups = [r.get("vs_bf16_compiled" if r["compiled"] else "vs_bf16", 0) for r in layer
                    if r["shape"] == largest and r["variant"].startswith("dswb fp8")]
    model = {r["variant"]: r for r in result["model"] if "tokens_per_s" in r}
    fp8_model = [r["vs_bf16_compiled"] for name, r in model.items()
                 if name.startswith("fp8") and r["compiled"] and "vs_bf16_compiled" in r]
    bf16_mfu = (model.get("bf16 compiled") or model.get("bf16") or {}).get("mfu")
    return {"layer_best_fp8_vs_bf16": max(fp8_speedups, default=None), "layer_goal": LAYER_GOAL,
            "model_best_fp8_vs_bf16_compiled": max(fp8_model, default=None),
            "bf16_mfu": bf16_mfu, "mfu_goal": MFU_GOAL}


def _fmt(value, spec: str, missing: str = "-") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else missing


def format_table(result: dict) -> str:
    torchao = "yes" if result["torchao"] else "not installed"
    lines = [f"device: {result['device']}, torch {result['torch']}, torchao {torchao}"]
    if not result["timings_meaningful"]:
        lines.append("CPU: toy sizes, one thread, no torch.compile. These timings mean nothing (no FP8 units); the "
                     "run checks that every variant runs and is correct. Run on an H100/H200 for the figures.")
    lines.append("layer forward+backward (FP32 master weight, BF16 autocast):")
    lines.append(f"  {'shape':17s} {'variant':22s} {'compiled':8s} {'ms':>9s} {'TFLOP/s':>8s} {'x bf16':>7s} "
                 f"{'x bf16c':>7s} {'rel err':>8s}  backend")
    for r in result["layer"]:
        if "error" in r:
            lines.append(f"  {r['shape']:17s} {r['variant']:22s} {str(r['compiled']):8s} error: {r['error']}")
            continue
        lines.append(f"  {r['shape']:17s} {r['variant']:22s} {str(r['compiled']):8s} {r['ms']:9.3f} "
                     f"{r['tflops']:8.2f} {_fmt(r.get('vs_bf16'), '7.2f'):>7s} "
                     f"{_fmt(r.get('vs_bf16_compiled'), '7.2f'):>7s} {r['rel_err']:8.4f}  {r['backend']}")
    lines.append("model training step (dswb prepare_model + train_step):")
    for r in result["model"]:
        if "error" in r:
            lines.append(f"  {r['variant']:28s} error: {r['error']}")
            continue
        lines.append(f"  {r['variant']:28s} {r['step_ms']:9.1f} ms/step {r['tokens_per_s']:10.0f} tok/s "
                     f"{r['tflops']:8.3f} TFLOP/s  MFU {_fmt(r['mfu'], '.1%', 'n/a (peak unknown)')}  "
                     f"x first {_fmt(r.get('vs_base'), '.2f')}  x bf16c {_fmt(r.get('vs_bf16_compiled'), '.2f')}  "
                     f"loss {r['last_loss']:.3f}")
    if not result["timings_meaningful"]:
        lines.append("goals (FP8 layer >= 1.3x BF16, FP8 model step faster than compiled BF16, BF16 MFU >= 40%): "
                     "measured on a GPU only")
        return "\n".join(lines)
    g = result["goals"]
    lines.append(f"goals: FP8 layer >= {g['layer_goal']}x BF16 at the largest shape: best "
                 f"{_fmt(g['layer_best_fp8_vs_bf16'], '.2f')}x; FP8 model step faster than compiled BF16: best "
                 f"{_fmt(g['model_best_fp8_vs_bf16_compiled'], '.2f')}x; BF16 MFU >= {g['mfu_goal']:.0%}: "
                 f"{_fmt(g['bf16_mfu'], '.1%')}")
    return "\n".join(lines)
