"""`dswb bench parallel`: how evenly the layer planner loads the devices, against the seed's split.

Balance: Llama-3-shaped 8B and 70B models over 2, 4, 6 and 8 devices of 80 GB, for two workloads:
- train: fp32 master weights, grads and AdamW moments, bf16 autocast, 8,192 tokens per micro-batch
  at sequence 4,096, activation checkpointing on;
- infer: a bf16 checkpoint's weights only (2 bytes per parameter) and one block's working set, as
  inference device maps place a model.
For each: does the plan fit, max device load / ideal (1.00 = perfectly even, ideal = total / devices),
the fullest device's use of its 80 GB, and the same for the seed sketch's `i // (layers // gpus)`
split (embedding on the first device, norm and head on the last: its best case), including the layers
it sends to a device that does not exist when the layers do not divide evenly (6 devices).

Hook overhead (not with --quick): the one-thread CPU step time of a tiny Llama mapped onto 4 "devices"
that are all the CPU vs the same model unmapped: the cost of the boundary hooks alone (indicative only
on a loaded machine).
"""

from __future__ import annotations

import statistics
import time

from dswb.engine.parallel.memory import MemoryModel
from dswb.engine.parallel.planner import DeviceSpec, plan_layers, seed_even_split
from dswb.engine.parallel.shapes import ModelShape

GB = 10**9
MODELS = {
    "llama-3-8b": ModelShape("llama", 4096, 14336, 32, 32, 8, 128, 128256, source="llama-3-8b"),
    "llama-3-70b": ModelShape("llama", 8192, 28672, 80, 64, 8, 128, 128256, source="llama-3-70b"),
}
WORKLOADS = {
    "train": MemoryModel(compute="bf16", tokens=8192, seq_len=4096, activation_checkpointing=True),
    "infer": MemoryModel(trainable=False, weight_bytes=2, compute="bf16", tokens=8192, seq_len=4096),
}
DEVICE_COUNTS = (2, 4, 6, 8)
DEVICE_BYTES = 80 * GB


def _peak_use(plan) -> float:
    return max(d.total / DEVICE_BYTES for d in plan.devices + plan.phantom)


def balance_section(quick: bool) -> list[dict]:
    rows = []
    for model_name, shape in MODELS.items():
        for workload, mm in WORKLOADS.items():
            for n in DEVICE_COUNTS:
                devices = [DeviceSpec(f"cuda:{i}", DEVICE_BYTES) for i in range(n)]
                t0 = time.perf_counter()
                planned = plan_layers(shape, mm, devices)
                plan_ms = (time.perf_counter() - t0) * 1000
                seed = seed_even_split(shape, mm, devices)
                rows.append({
                    "model": model_name, "workload": workload, "devices": n,
                    "total_gb": planned.total_bytes / GB, "fits": planned.fits,
                    "planner_load_ratio": planned.load_ratio(), "planner_peak_use": _peak_use(planned),
                    "planner_flops_ratio": planned.flops_ratio(),
                    "seed_load_ratio": seed.load_ratio(), "seed_peak_use": _peak_use(seed), "seed_fits": seed.fits,
                    "seed_missing_layers": sum(1 for d in seed.phantom for u in d.units if u.kind == "block"),
                    "plan_ms": plan_ms,
                })
    return rows


def hook_overhead_section(quick: bool) -> dict | None:
    """Median forward+backward time of a tiny Llama on one thread, unmapped vs mapped over 4 CPU
    'devices' (steps interleaved, so a change in the machine's load hits both alike)."""
    if quick:
        return None
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dswb.engine.parallel.layer_map import map_layers, model_units, shape_of

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    ids = torch.randint(0, 2048, (4, 64))
    plain, mapped = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg)
    shape = shape_of(mapped)
    plan = plan_layers(shape, MemoryModel(tokens=256, seq_len=64), [DeviceSpec("cpu")] * 4,
                       model_units=model_units(mapped, shape))
    map_layers(mapped, plan, [torch.device("cpu")] * 4)

    def step(model) -> float:
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"plain": [], "mapped": []}
    for i in range(22):
        for name, model in (("plain", plain), ("mapped", mapped)):
            seconds = step(model)
            if i >= 2:  # warm-up
                times[name].append(seconds)
    torch.set_num_threads(threads)
    base, hooked = statistics.median(times["plain"]), statistics.median(times["mapped"])
    return {"model": "llama 4 layers x 128 (1.3 M)", "batch": "4 x 64", "unmapped_ms": base * 1000,
            "mapped_4_ms": hooked * 1000, "overhead": hooked / base - 1}


# The distributed half (torchrun, DDP, FSDP2) adds a section here: ("processes", processes_section),
# step time and tokens/s for 1 vs 2 processes on CPU (gloo), and throughput per GPU with DDP and FSDP2
# when GPUs are present. Each section is `fn(quick) -> rows`, shown by `format_table`.
SECTIONS = [("balance", balance_section), ("hook_overhead", hook_overhead_section)]


def run(quick: bool = False) -> dict:
    result: dict = {"device_gb": DEVICE_BYTES / GB,
                    "workloads": {name: mm.describe() for name, mm in WORKLOADS.items()}}
    for name, section in SECTIONS:
        result[name] = section(quick)
    return result


def _fits(value) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def format_table(result: dict) -> str:
    lines = [f"layer planner vs the seed's even split, devices of {result['device_gb']:.0f} GB"]
    lines += [f"  {name}: {text}" for name, text in result["workloads"].items()]
    head = (f"{'model':<13}{'work':<7}{'dev':>4}{'total':>9}{'fits':>6}{'load/ideal':>11}{'peak use':>10}"
            f"{'FLOPs/ideal':>12}{'seed load':>11}{'seed peak':>11}{'seed missing':>14}{'ms':>6}")
    lines += ["", head]
    for r in result["balance"]:
        missing = f"{r['seed_missing_layers']} layers" if r["seed_missing_layers"] else "-"
        lines.append(f"{r['model']:<13}{r['workload']:<7}{r['devices']:>4}{r['total_gb']:>7.0f}GB{_fits(r['fits']):>6}"
                     f"{r['planner_load_ratio']:>11.3f}{r['planner_peak_use']:>10.0%}{r['planner_flops_ratio']:>12.3f}"
                     f"{r['seed_load_ratio']:>11.3f}{r['seed_peak_use']:>11.0%}{missing:>14}{r['plan_ms']:>6.0f}")
    lines.append("")
    lines.append("load/ideal = fullest device's bytes / (total / devices); peak use = fullest device / 80 GB; "
                 "seed missing = layers the seed's split sends past the last device")
    hooks = result.get("hook_overhead")
    if hooks:
        lines.append("")
        lines.append(f"hook overhead on CPU ({hooks['model']}, batch {hooks['batch']}, forward+backward): "
                     f"unmapped {hooks['unmapped_ms']:.0f} ms, mapped over 4 CPU 'devices' "
                     f"{hooks['mapped_4_ms']:.0f} ms ({hooks['overhead']:+.1%}); indicative only on a shared machine")
    return "\n".join(lines)
