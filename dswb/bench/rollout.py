"""`dswb bench rollout`: tokens/s of the RL rollout sampler against transformers' `generate`.

Same model, same prompts, same sampling distribution (temperature 1, no top-k/top-p): the tiny
Llama with the built-in task's character tokenizer, prompted with the task's test prompts
(`bos 37+48=`). Generated tokens count up to and including the stop token. Each timing is the
best of several runs, alternating the contenders, after a warm-up; CUDA is synchronised. On a
CPU the bench runs on one thread (this model's ops are too small to split) and also reports
tokens per second of process CPU time, which a shared, loaded machine disturbs far less than
wall time. Regimes:

- short answers: the model is first trained for a few seconds on the task's format, so it
  answers with 3 digits and eos like the policy of the demo; max_new_tokens 8, stop at eos.
- long: 64 new tokens, eos does not stop.
- varied lengths: the untrained model with eos allowed and 64 new tokens, so rows end at very
  different steps (rollouts of a policy whose answers vary in length).

Besides the sampler as PPO/GRPO use it, "plain loop" is the same loop without its three tricks
(a preallocated KV cache, dropping ended rows from the batch, one prefill shared by the samples
of a prompt), to show what each regime owes to them; the short regime also has a GRPO-shaped
batch (8 prompts x 8 samples). Goal: >= 1.5x `generate` at batch 64.
"""

from __future__ import annotations

import time

import torch

from dswb.engine.data.records.task import AdditionTask
from dswb.engine.data.records.tokenizer import build_char_tokenizer
from dswb.engine.model.device import autocast
from dswb.engine.data.batches.collate import left_pad
from dswb.engine.rl.rollout import HFRolloutSampler

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
AMP = torch.bfloat16 if DEVICE.type == "cuda" else None
BATCHES = (1, 16, 64)
GOAL = 1.5


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def build(seed: int = 0):
    """The tiny Llama, the task tokenizer and 64 encoded test prompts (bos included)."""
    from transformers import LlamaForCausalLM

    from dswb.engine.model.build import llama_config

    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config("tiny", len(tok), 128, tok.bos_token_id, tok.eos_token_id,
                                          tok.pad_token_id)).to(DEVICE)
    task = AdditionTask(2)
    examples = task.split(2000, 0, 64)
    prompts = [[tok.bos_token_id] + tok.encode(e.prompt, add_special_tokens=False) for e in examples.test]
    return model, tok, prompts, examples.train


def train_format(model, tok, examples, steps: int, seed: int = 0) -> float:
    """A few steps of next-token training on `bos a+b=sss eos`: the model learns the answer format."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.tensor([[tok.bos_token_id] + tok.encode(e.text, add_special_tokens=False) + [tok.eos_token_id]
                         for e in examples], device=DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = rows[torch.randint(len(rows), (64,), generator=g).to(DEVICE)]
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


def generated_tokens(out: torch.Tensor, prompt_width: int, eos_id: int | None) -> int:
    """Tokens `generate` produced: up to and including the first eos of each row (all if no eos)."""
    new = out[:, prompt_width:]
    if eos_id is None:
        return new.numel()
    is_eos = new == eos_id
    until_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, new.shape[1])
    return int(until_eos.sum())


def _timed(fn) -> tuple[float, float, int]:
    """(wall seconds, this process's CPU seconds, tokens) of one call."""
    _sync()
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    _sync()
    return time.perf_counter() - w0, time.process_time() - c0, n


def measure(model, prompts, samples: int, max_new: int, eos_id: int | None, repeats: int, pad_id: int = 0) -> dict:
    """Best tokens/s of each contender on `prompts` x `samples` rows."""
    stop = [eos_id] if eos_id is not None else []
    sampler = HFRolloutSampler(model, pad_id, DEVICE, amp_dtype=AMP)
    plain = HFRolloutSampler(model, pad_id, DEVICE, amp_dtype=AMP, shrink=0.0, preallocate=False,
                             share_prefill=False)
    rows = [p for p in prompts for _ in range(samples)]
    ids, mask = left_pad(rows, pad_id, DEVICE)
    seed = iter(range(10**6))

    def ours(s):
        def run():
            r = s.generate(prompts, samples_per_prompt=samples, max_new_tokens=max_new, stop_ids=stop,
                           generator=torch.Generator().manual_seed(next(seed)))
            return int(r.lengths.sum())
        return run

    def hf():
        with torch.no_grad(), autocast(DEVICE, AMP):
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=None, max_new_tokens=max_new, pad_token_id=pad_id, eos_token_id=eos_id)
        return generated_tokens(out, ids.shape[1], eos_id)

    contenders = {"sampler": ours(sampler), "plain loop": ours(plain), "generate": hf}
    runs: dict[str, list[tuple[float, float, int]]] = {k: [] for k in contenders}
    for fn in contenders.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in contenders.items():
            runs[name].append(_timed(fn))
    out = {}
    for name, timings in runs.items():
        wall, _, n = max(timings, key=lambda r: r[2] / r[0])
        _, cpu, n_cpu = max(timings, key=lambda r: r[2] / max(r[1], 1e-9))
        out[name] = {"tokens_per_s": n / wall, "seconds": wall, "tokens": n,
                     "cpu_tokens_per_s": n_cpu / max(cpu, 1e-9), "cpu_seconds": cpu,
                     "mean_tokens_per_s": sum(r[2] for r in timings) / sum(r[0] for r in timings)}
    totals = {name: sum(r[2] for r in timings) for name, timings in runs.items()}
    out["rows"] = len(rows)
    out["mean_length"] = totals["sampler"] / repeats / len(rows)
    out["generate_mean_length"] = totals["generate"] / repeats / len(rows)
    out["speedup"] = out["sampler"]["tokens_per_s"] / out["generate"]["tokens_per_s"]
    out["cpu_speedup"] = out["sampler"]["cpu_tokens_per_s"] / out["generate"]["cpu_tokens_per_s"]
    return out


def run(quick: bool = False) -> dict:
    threads = torch.get_num_threads()
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)  # this model's ops are too small to split; extra threads only contend
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool) -> dict:
    repeats = 3 if quick else 7
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    model, tok, prompts, train = build()
    result = {"device": name, "torch_threads": torch.get_num_threads(), "repeats": repeats,
              "model": "llama-tiny (char vocab 16)", "goal": GOAL, "regimes": []}
    eos, pad = tok.eos_token_id, tok.pad_token_id
    varied = {"name": "varied lengths", "max_new_tokens": 64, "stop_at_eos": True, "rows": []}
    for b in BATCHES:
        varied["rows"].append({"batch": b, **measure(model, prompts[:b], 1, 64, eos, repeats, pad)})
    long = {"name": "long", "max_new_tokens": 64, "stop_at_eos": False, "rows": []}
    for b in BATCHES:
        long["rows"].append({"batch": b, **measure(model, prompts[:b], 1, 64, None, repeats, pad)})
    t0 = time.perf_counter()
    loss = train_format(model, tok, train, steps=60)
    short = {"name": "short answers", "max_new_tokens": 8, "stop_at_eos": True, "rows": [],
             "format_training": {"loss": loss, "seconds": time.perf_counter() - t0}}
    for b in BATCHES:
        short["rows"].append({"batch": b, **measure(model, prompts[:b], 1, 8, eos, repeats, pad)})
    short["rows"].append({"batch": "8x8", **measure(model, prompts[:8], 8, 8, eos, repeats, pad)})
    result["regimes"] = [short, long, varied]
    at_64 = [r for reg in result["regimes"] for r in reg["rows"] if r["batch"] == 64]
    result["min_speedup_at_64"] = min(r["speedup"] for r in at_64)
    result["min_cpu_speedup_at_64"] = min(r["cpu_speedup"] for r in at_64)
    return result


def format_table(result: dict) -> str:
    cpu = result["device"] == "cpu"
    lines = [f"device: {result['device']} ({result['torch_threads']} threads), {result['model']}, "
             f"best of {result['repeats']} runs; generated tokens/s (stop token included)"]
    if cpu:
        lines.append("on a CPU also by process CPU time (steadier than wall time on a shared machine)")
    for reg in result["regimes"]:
        stop = "stop at eos" if reg["stop_at_eos"] else "eos does not stop"
        lines.append(f"{reg['name']}: max_new_tokens {reg['max_new_tokens']}, {stop}")
        lines.append(f"  {'batch':>5} {'mean len':>8} {'sampler':>9} {'plain loop':>10} {'generate':>9} {'speedup':>8}"
                     + (f" {'by CPU time':>12}" if cpu else ""))
        for r in reg["rows"]:
            lines.append(f"  {r['batch']!s:>5} {r['mean_length']:8.1f} {r['sampler']['tokens_per_s']:9.0f} "
                         f"{r['plain loop']['tokens_per_s']:10.0f} {r['generate']['tokens_per_s']:9.0f} "
                         f"{r['speedup']:7.2f}x" + (f" {r['cpu_speedup']:11.2f}x" if cpu else ""))
    lines.append(f"speedup over model.generate at batch 64: min {result['min_speedup_at_64']:.2f}x"
                 + (f" (by CPU time {result['min_cpu_speedup_at_64']:.2f}x)" if cpu else "")
                 + f"; goal >= {result['goal']:.1f}x")
    return "\n".join(lines)
