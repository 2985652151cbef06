"""`dswb bench parallel`: how evenly the layer planner loads the devices, against the blog's split.

Balance: Llama-3-shaped 8B and 70B models over 2, 4, 6 and 8 devices of 80 GB, for two workloads:
- train: fp32 master weights, grads and AdamW moments, bf16 autocast, 8,192 tokens per micro-batch
  at sequence 4,096, activation checkpointing on;
- infer: a bf16 checkpoint's weights only (2 bytes per parameter) and one block's working set, as
  inference device maps place a model.
For each: does the plan fit, max device load / ideal (1.00 = perfectly even, ideal = total / devices),
the fullest device's use of its 80 GB, and the same for the `i // (layers // gpus)` split of the
blog's sketch (see the README; embedding on the first device, norm and head on the last: its best
case), including the layers it sends to a device that does not exist when the layers do not divide
evenly (6 devices).

Hook overhead (not with --quick): the one-thread CPU step time of a tiny Llama mapped onto 4 "devices"
that are all the CPU vs the same model unmapped: the cost of the boundary hooks alone (indicative only
on a loaded machine).

Processes: the real distributed step (`prepare_model`'s DDP / FSDP2 wrapping and `train_step`, under
torchrun) on a fixed per-rank batch of a Llama: the median step time and the tokens/s of the whole
world, for one process (1 thread, and all the threads the machine has) against two processes of one
thread each (DDP, FSDP2), with gloo on the CPU; with GPUs, one process per GPU (nccl, bf16) for DDP and
FSDP2 and the tokens/s per GPU. Two processes on a 2-core CPU can at best double one single-threaded
process, and a shared machine makes every figure indicative only.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dswb.engine.placement.memory import MemoryModel
from dswb.engine.placement.planner import DeviceSpec, plan_layers, blog_even_split
from dswb.engine.placement.shapes import ModelShape

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
                seed = blog_even_split(shape, mm, devices)
                rows.append({
                    "model": model_name, "workload": workload, "devices": n,
                    "total_gb": planned.total_bytes / GB, "fits": planned.fits,
                    "planner_load_ratio": planned.load_ratio(), "planner_peak_use": _peak_use(planned),
                    "planner_flops_ratio": planned.flops_ratio(),
                    "blog_load_ratio": seed.load_ratio(), "blog_peak_use": _peak_use(seed), "blog_fits": seed.fits,
                    "blog_missing_layers": sum(1 for d in seed.phantom for u in d.units if u.kind == "block"),
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

    from dswb.engine.placement.layer_map import map_layers, model_units, shape_of

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


# (label, processes, parallel.mode, threads per process); a GPU run uses every GPU instead.
CPU_CASES = [("1 process, 1 thread", 1, "none", 1), ("1 process, all threads", 1, "none", 0),
             ("2 processes, ddp", 2, "ddp", 1), ("2 processes, fsdp", 2, "fsdp", 1)]


def processes_section(quick: bool) -> list[dict]:
    """Median step time and world tokens/s of the distributed step, one case per torchrun launch."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    size, rows, seq, steps = ("tiny", 4, 64, 8) if quick else ("small", 8, 128, 20)
    if gpus:
        size, rows, seq = "base", 16, 512
        cases = [(f"{gpus} GPU{'s' if gpus > 1 else ''}, ddp", gpus, "ddp", 0),
                 (f"{gpus} GPU{'s' if gpus > 1 else ''}, fsdp", gpus, "fsdp", 0)]
    else:
        cases = CPU_CASES if not quick else [CPU_CASES[0], CPU_CASES[2]]
    out = []
    for label, nproc, mode, threads in cases:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            args = ["--worker", str(result), size, str(rows), str(seq), str(steps), mode, str(threads)]
            if nproc > 1 or mode != "none":
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                       "-m", "dswb.bench.parallel", *args]
            else:
                cmd = [sys.executable, "-m", "dswb.bench.parallel", *args]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads or os.cpu_count() or 1)}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0 or not result.exists():
                out.append({"case": label, "error": (done.stdout + done.stderr).strip().splitlines()[-1:]})
                continue
            row = json.loads(result.read_text())
        out.append({"case": label, "processes": nproc, "mode": mode, **row,
                    "tokens_per_s_per_device": row["tokens_per_s"] / nproc})
    return out


def _worker(result: str, size: str, rows: int, seq: int, steps: int, mode: str, threads: int) -> None:
    """One case (every rank runs it): `steps` timed steps after 3 warm-up steps; rank 0 writes JSON."""
    import torch

    from dswb.config import load_config
    from dswb.engine.data.batches.collate import collate_padded
    from dswb.engine.model.device import autocast_dtype, select_device, set_determinism
    from dswb.engine.model.build import llama_config
    from dswb.engine.train.optim import build_optimizer
    from dswb.engine.distributed.world import active, ensure_world, shutdown
    from dswb.engine.train.step import train_step
    from dswb.engine.train.prepare import prepare_model
    from transformers import LlamaForCausalLM

    config = load_config(None, [f"parallel.mode={mode}", f"run.threads={threads}"])
    world = ensure_world(config)
    device = select_device(config.run.device)
    set_determinism(0, threads)
    model = prepare_model(LlamaForCausalLM(llama_config(size, 2048, seq, 1, 2, 0)), config, device)
    optimizer = build_optimizer(model, config.train, device)
    rank = world.rank if world else 0
    gen = torch.Generator().manual_seed(rank)
    batch = collate_padded(torch.randint(3, 2048, (rows, seq), generator=gen).tolist(), 0, seq).to(device)
    amp = autocast_dtype(device, config.run.precision)
    times = []
    for i in range(3 + steps):
        t0 = time.perf_counter()
        train_step(model, optimizer, [batch], device, amp, 1.0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    if world is not None:
        times = [world.max([t])[0] for t in times]
    size_w = world.size if world else 1
    step = statistics.median(times)
    if rank == 0:
        params = sum(p.numel() for p in model.parameters()) * (size_w if mode == "fsdp" else 1)
        Path(result).write_text(json.dumps({
            "model": f"llama-{size}", "params_m": params / 1e6, "batch_per_rank": f"{rows} x {seq}",
            "device": str(device), "threads": torch.get_num_threads(), "step_ms": step * 1000,
            "tokens_per_s": size_w * rows * seq / step, "steps": steps}))
    if active() is not None:
        shutdown(0)


SECTIONS = [("balance", balance_section), ("hook_overhead", hook_overhead_section), ("processes", processes_section)]


def run(quick: bool = False) -> dict:
    result: dict = {"device_gb": DEVICE_BYTES / GB,
                    "workloads": {name: mm.describe() for name, mm in WORKLOADS.items()}}
    for name, section in SECTIONS:
        result[name] = section(quick)
    return result


def _fits(value) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def format_table(result: dict) -> str:
    lines = [f"layer planner vs the blog sketch's even split, devices of {result['device_gb']:.0f} GB"]
    lines += [f"  {name}: {text}" for name, text in result["workloads"].items()]
    head = (f"{'model':<13}{'work':<7}{'dev':>4}{'total':>9}{'fits':>6}{'load/ideal':>11}{'peak use':>10}"
            f"{'FLOPs/ideal':>12}{'blog load':>11}{'blog peak':>11}{'blog missing':>14}{'ms':>6}")
    lines += ["", head]
    for r in result["balance"]:
        missing = f"{r['blog_missing_layers']} layers" if r["blog_missing_layers"] else "-"
        lines.append(f"{r['model']:<13}{r['workload']:<7}{r['devices']:>4}{r['total_gb']:>7.0f}GB{_fits(r['fits']):>6}"
                     f"{r['planner_load_ratio']:>11.3f}{r['planner_peak_use']:>10.0%}{r['planner_flops_ratio']:>12.3f}"
                     f"{r['blog_load_ratio']:>11.3f}{r['blog_peak_use']:>11.0%}{missing:>14}{r['plan_ms']:>6.0f}")
    lines.append("")
    lines.append("load/ideal = fullest device's bytes / (total / devices); peak use = fullest device / 80 GB; "
                 "blog = the blog sketch's even split; blog missing = layers it sends past the last device")
    procs = result.get("processes")
    if procs:
        lines += ["", "distributed step (DDP / FSDP2 under torchrun; tokens/s of the whole world; indicative only "
                      "on a shared machine: 2 processes on 2 CPU cores can at best double 1 single-threaded process)",
                  f"{'case':<26}{'model':>12}{'batch/rank':>12}{'threads':>9}{'step ms':>10}{'tokens/s':>11}{'per device':>12}"]
        for r in procs:
            if "error" in r:
                lines.append(f"{r['case']:<26}failed: {' '.join(r['error'])[:120]}")
                continue
            lines.append(f"{r['case']:<26}{r['model']:>12}{r['batch_per_rank']:>12}{r['threads']:>9}"
                         f"{r['step_ms']:>10.1f}{r['tokens_per_s']:>11.0f}{r['tokens_per_s_per_device']:>12.0f}")
    hooks = result.get("hook_overhead")
    if hooks:
        lines.append("")
        lines.append(f"hook overhead on CPU ({hooks['model']}, batch {hooks['batch']}, forward+backward): "
                     f"unmapped {hooks['unmapped_ms']:.0f} ms, mapped over 4 CPU 'devices' "
                     f"{hooks['mapped_4_ms']:.0f} ms ({hooks['overhead']:+.1%}); indicative only on a shared machine")
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7],
            int(sys.argv[8]))
