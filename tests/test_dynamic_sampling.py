"""DAPO's dynamic sampling (`dswb.engine.rl.dynamic_sampling`): the signal filter on the raw reward
sources, the rounds' prompts and random numbers as pure functions of (seed, step, round), the batch
it keeps (every kept group varies, the first ones in a fixed order), the update on it equal to the
update on those groups built directly, two processes keeping what one keeps, and a stage run with
it that resumes bitwise.

Rounds here are synthetic (`fake_round`): group g of round k is a pure function of (k, g), so any
process can build any group, as the sampler does from (seed, step, round)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_in_process, tiny_config
from transformers import LlamaConfig, LlamaForCausalLM

from dswb.engine.data.records.posttrain import PromptRecord
from dswb.engine.distributed.sharding import prompt_block
from dswb.engine.rl.advantages import group_advantages, zero_std_groups
from dswb.engine.rl.dynamic_sampling import SIGNAL_RTOL, choose_groups, concat, dynamic_sample, groups_with_signal
from dswb.engine.rl.global_batch import global_advantages
from dswb.engine.rl.rewards import RewardScores
from dswb.engine.rl.rollout import Rollouts
from dswb.engine.stages.grpo import attach_logprobs, grpo_update, update_rows
from dswb.engine.stages.rl_common import Experience, iteration_generator, select_prompts

NAN = float("nan")
VOCAB, PAD, G, P = 40, 0, 4, 6
CPU = torch.device("cpu")
TIMEOUT = 240
t = torch.tensor


# --- synthetic rounds -----------------------------------------------------------------------------

def has_signal(attempt: int, g: int) -> bool:
    return (g + attempt) % 2 == 0        # round 0: groups 0, 2, 4; round 1: groups 1, 3, 5


def fake_group(attempt: int, g: int) -> dict:
    """The 4 rows of group g of round `attempt`: completions of varied lengths (longer in later rounds),
    an `acc` source that varies only in groups with signal (where row 2 is unscorable) and a constant
    `fmt` source."""
    gen = torch.Generator().manual_seed(1000 * attempt + g)
    lengths = torch.randint(1, 4 + 2 * attempt, (G,), generator=gen)
    width = int(lengths.max())
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.randint(3, VOCAB, (G, width), generator=gen) * mask
    acc = t([1.0, 0.0, NAN, 1.0]) if has_signal(attempt, g) else torch.full((G,), 0.2)
    fmt = t([0.5, 0.5, NAN, 0.5]) if has_signal(attempt, g) else torch.full((G,), 0.5)   # row 2: unscorable
    return {"prompt": [1, 3 + g, 5 + attempt], "ids": ids, "mask": mask, "lengths": lengths,
            "ended": lengths < 3 + 2 * attempt, "acc": acc, "fmt": fmt, "name": f"{attempt}:{g}"}


def experience_of(groups: list[dict], generation_s: float = 0.0) -> Experience:
    """The rows of these groups as the sampler and scorer return them (padded to their longest)."""
    width = max(grp["ids"].shape[1] for grp in groups)

    def pad(x):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]))

    acc, fmt = torch.cat([grp["acc"] for grp in groups]), torch.cat([grp["fmt"] for grp in groups])
    stacked = torch.stack([acc, 0.5 * fmt])
    total = torch.nansum(stacked, dim=0).masked_fill(torch.isnan(stacked).all(dim=0), NAN)
    r = Rollouts(prompt_ids=[grp["prompt"] for grp in groups for _ in range(G)],
                 prompt_index=torch.arange(len(groups)).repeat_interleave(G),
                 completion_ids=torch.cat([pad(grp["ids"]) for grp in groups]),
                 completion_mask=torch.cat([pad(grp["mask"]) for grp in groups]),
                 logprobs=torch.zeros(len(groups) * G, width), ended=torch.cat([grp["ended"] for grp in groups]),
                 lengths=torch.cat([grp["lengths"] for grp in groups]))
    return Experience(rollouts=r, records=[PromptRecord(grp["name"]) for grp in groups for _ in range(G)],
                      completions=[f"{grp['name']}:{i}" for grp in groups for i in range(G)],
                      scores=RewardScores(total=total, per_source={"acc": acc, "fmt": fmt}),
                      timings={"generation": generation_s, "scoring": 0.5})


def fake_round(attempt: int) -> Experience:
    """This process's block of round `attempt` (all of it in one process)."""
    lo, hi = prompt_block(P)
    return experience_of([fake_group(attempt, g) for g in range(lo, hi)], generation_s=1.0 + attempt)


def assert_same_experience(a: Experience, b: Experience) -> None:
    ra, rb = a.rollouts, b.rollouts
    for name in ("prompt_index", "completion_ids", "completion_mask", "logprobs", "ended", "lengths"):
        assert torch.equal(getattr(ra, name), getattr(rb, name)), name
    assert ra.prompt_ids == rb.prompt_ids and a.records == b.records and a.completions == b.completions
    assert torch.equal(a.scores.total, b.scores.total) or torch.allclose(a.scores.total, b.scores.total, equal_nan=True)
    for k in b.scores.per_source:
        assert torch.allclose(a.scores.per_source[k], b.scores.per_source[k], equal_nan=True)


# --- the filter and the choice ----------------------------------------------------------------------

def test_signal_needs_some_raw_source_to_vary_beyond_float32_noise():
    five = 5.0
    next_five = float(np.nextafter(np.float32(five), np.float32(10)))     # one float32 step above 5
    acc = t([1.0, 1.0, 1.0, 1.0,  0.0, 1.0, NAN, NAN,  five, next_five, five, five,  2.0, NAN, NAN, NAN,
             NAN, NAN, NAN, NAN,  3.0, 3.0, 3.0, 3.0 + 1e-4])
    fmt = t([0.0, 0.0, 0.0, 1.0,  0.5, 0.5, 0.5, 0.5,  0.5, 0.5, 0.5, 0.5,  1.0, NAN, NAN, NAN,
             NAN, NAN, NAN, NAN,  0.5, 0.5, 0.5, 0.5])
    got = groups_with_signal({"acc": acc, "fmt": fmt}, 4).tolist()
    # fmt varies | acc varies over 2 scorable | 1 ulp: noise | 1 scorable | none scorable | 3e-5 relative
    assert got == [True, True, False, False, False, True]
    assert next_five - five < SIGNAL_RTOL * (1 + five)


def test_the_filter_reads_the_sources_not_their_weighted_sum():
    """Two sources that vary in opposite directions: the weighted sum is flat, the group has signal."""
    a, b = t([1.0, 0.0, 1.0, 0.0]), t([0.0, 1.0, 0.0, 1.0])
    assert groups_with_signal({"a": a, "b": b}, 4).tolist() == [True]
    assert zero_std_groups(a + b, 4).tolist() == [True]


def test_choose_groups_takes_the_first_with_signal_then_fills_in_order():
    signal = [False, True, False, True, True, False, True]
    assert choose_groups(signal, 3) == [1, 3, 4]
    assert choose_groups(signal, 6) == [0, 1, 2, 3, 4, 6]    # 4 with signal, then the first 2 without
    assert choose_groups([False, False], 2) == [0, 1]


# --- rounds as pure functions -----------------------------------------------------------------------

def old_select_prompts(n_prompts: int, per_step: int, seed: int, step: int) -> list[int]:
    """The iteration's prompts before dynamic sampling existed (round 0 must stay exactly these)."""
    out: list[int] = []
    start = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n_prompts)
        order = np.random.default_rng([seed, 7919, epoch]).permutation(n_prompts)
        out.extend(order[offset:offset + per_step - len(out)].tolist())
    return out


def test_round_zero_is_the_iteration_without_dynamic_sampling():
    for step in (0, 3, 17):
        assert select_prompts(50, 8, 11, step) == select_prompts(50, 8, 11, step, 0)
        assert select_prompts(50, 8, 11, step) == old_select_prompts(50, 8, 11, step)
        old = torch.Generator().manual_seed(int(np.random.default_rng([11, 104729, step]).integers(2**62)))
        assert torch.equal(torch.rand(5, generator=iteration_generator(11, step, 0)), torch.rand(5, generator=old))


def test_later_rounds_draw_other_prompts_and_numbers_as_pure_functions():
    rounds = [select_prompts(100, 8, 11, 4, k) for k in range(4)]
    assert rounds == [select_prompts(100, 8, 11, 4, k) for k in range(4)]
    assert len({i for r in rounds for i in r}) == 32                       # no prompt twice in one iteration
    assert select_prompts(100, 8, 11, 5, 1) != rounds[1]
    draws = [torch.rand(4, generator=iteration_generator(11, 4, k)) for k in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert torch.equal(draws[1], torch.rand(4, generator=iteration_generator(11, 4, 1)))
    small = [select_prompts(10, 8, 11, 4, k) for k in range(3)]            # fewer prompts than rounds need
    assert all(len(r) == 8 and all(0 <= i < 10 for i in r) for r in small)
    assert not set(small[1][:2]) & set(small[0]) and len(set(small[1])) == 8   # the 2 fresh ones first
    big = select_prompts(5, 8, 11, 4, 1)                                   # more per step than prompts
    assert len(big) == 8 and set(big) == set(range(5))


# --- the batch ------------------------------------------------------------------------------------------

def test_rounds_until_enough_groups_have_signal():
    asked = []

    def generate(k):
        asked.append(k)
        return fake_round(k)

    sampled = dynamic_sample(generate, G, P, tries=4, pad_id=PAD)
    assert asked == [0, 1] and sampled.rounds == 2
    assert sampled.metrics() == {"dynamic_sampling/rounds": 2, "dynamic_sampling/groups_kept": P,
                                 "dynamic_sampling/groups_generated": 2 * P}
    exp = sampled.experience
    assert len(exp.rollouts) == P * G
    assert not zero_std_groups(exp.scores.total, G).any()                  # every kept group varies
    assert not zero_std_groups(exp.scores.per_source["acc"], G).any()
    keys = [(0, 0), (0, 2), (0, 4), (1, 1), (1, 3), (1, 5)]                # round, then prompt: a fixed order
    assert_same_experience(exp, experience_of([fake_group(k, g) for k, g in keys]))
    assert exp.rollouts.completion_ids.shape[1] == int(exp.rollouts.lengths.max())
    assert exp.timings == {"generation": 1.0 + 2.0, "scoring": 1.0}        # added up over the rounds
    both = [fake_round(0), fake_round(1)]
    assert sampled.completion_tokens == sum(int(e.rollouts.lengths.sum()) for e in both)
    assert sampled.prompt_tokens == sum(len(p) for e in both for p in e.rollouts.prompt_ids)


def test_one_round_with_enough_signal_is_that_round_unchanged():
    def generate(k):
        return experience_of([fake_group(0, g) for g in (0, 2, 4)], generation_s=1.0)

    sampled = dynamic_sample(generate, G, 3, tries=4, pad_id=PAD)
    assert sampled.rounds == 1 and sampled.groups_kept == 3
    assert_same_experience(sampled.experience, generate(0))
    assert sampled.experience.timings == generate(0).timings


def test_when_the_tries_run_out_groups_without_signal_fill_the_batch():
    sampled = dynamic_sample(fake_round, G, P, tries=1, pad_id=PAD)
    assert sampled.rounds == 1 and sampled.groups_kept == 3 and sampled.groups_generated == P
    assert_same_experience(sampled.experience, fake_round(0))               # the whole first round
    assert zero_std_groups(sampled.experience.scores.total, G).tolist() == [False, True] * 3


def test_concat_pads_to_the_widest_part():
    a, b = experience_of([fake_group(0, 1)]), experience_of([fake_group(1, 0)])
    both = concat([a, b], PAD)
    width = max(a.rollouts.completion_ids.shape[1], b.rollouts.completion_ids.shape[1])
    assert both.rollouts.completion_ids.shape == (2 * G, width)
    assert both.rollouts.prompt_index.tolist() == [0] * G + [1] * G
    assert torch.equal(both.rollouts.completion_mask.sum(1), torch.cat([a.rollouts.lengths, b.rollouts.lengths]))


def test_merged_scores_keep_every_per_row_field():
    a, b = experience_of([fake_group(0, 0)]), experience_of([fake_group(1, 0)])
    for exp, failed in ((a, [False, False, True, False]), (b, [True, False, False, False])):
        exp.scores.unscorable = {"acc": t(failed), "fmt": torch.zeros(G, dtype=torch.bool)}
        exp.scores.reasoning = {"think_tokens": torch.arange(G)}
    a.scores.errors = {"acc": "first"}
    b.scores.errors = {"acc": "second", "fmt": "other"}
    both = concat([a, b], PAD)
    assert both.scores.unscorable["acc"].tolist() == [False, False, True, False, True, False, False, False]
    assert both.scores.reasoning["think_tokens"].tolist() == [0, 1, 2, 3] * 2
    assert both.scores.errors == {"acc": "first", "fmt": "other"}
    sampled = dynamic_sample(lambda k: both, G, 1, tries=1, pad_id=PAD)     # group 0 has signal: kept alone
    assert sampled.experience.scores.unscorable["acc"].tolist() == [False, False, True, False]
    assert sampled.experience.scores.reasoning["think_tokens"].tolist() == [0, 1, 2, 3]


# --- the update ---------------------------------------------------------------------------------------

def causal_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=PAD, attn_implementation="sdpa"))


def one_step(exp: Experience, loss_type: str) -> dict[str, torch.Tensor]:
    sec = tiny_config('run.stages=["grpo"]', 'grpo.rewards=["exact_match"]', f"grpo.group_size={G}",
                      f"grpo.loss_type={loss_type}", "grpo.max_new_tokens=8", "grpo.clip_grad=0",
                      "grpo.dynamic_sampling=true", "grpo.grad_accum=2").grpo
    policy = causal_lm()
    rewards = exp.scores.total
    adv = group_advantages(rewards, G, sec.advantage, sec.scale_rewards)
    batch = update_rows(exp.rollouts, adv, zero_std_groups(rewards, G), sec, skip_zero_advantage=True, device=CPU,
                        unscorable=torch.isnan(rewards))
    with torch.no_grad():
        attach_logprobs(batch, policy, None, sec, None, PAD)
    grpo_update(policy, torch.optim.SGD(policy.parameters(), lr=0.5), batch, sec, None, PAD)
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_the_update_equals_the_update_on_the_kept_groups_built_directly(loss_type):
    sampled = dynamic_sample(fake_round, G, P, tries=4, pad_id=PAD)
    direct = experience_of([fake_group(k, g) for k, g in [(0, 0), (0, 2), (0, 4), (1, 1), (1, 3), (1, 5)]])
    start = {k: v.clone() for k, v in causal_lm().state_dict().items()}
    a, b = one_step(sampled.experience, loss_type), one_step(direct, loss_type)
    assert any(not torch.equal(a[k], start[k]) for k in a)                 # it trained
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


# --- two processes ------------------------------------------------------------------------------------

def one_process_result() -> dict:
    sampled = dynamic_sample(fake_round, G, P, tries=4, pad_id=PAD)
    exp = sampled.experience
    return {"records": [r.prompt for r in exp.records], "totals": exp.scores.total,
            "lengths": exp.rollouts.lengths, "rows": _rows(exp), "metrics": sampled.metrics(),
            "advantages": group_advantages(exp.scores.total, G, "reinforce_pp")}


def _rows(exp: Experience) -> list[list[int]]:
    r = exp.rollouts
    return [row[:int(n)] for row, n in zip(r.completion_ids.tolist(), r.lengths.tolist())]


DDP_RUN = ["run.device=cpu", "monitor.log_every=1", 'run.stages=["sft","grpo"]', "sft.steps=2", "sft.warmup_steps=1",
           "grpo.steps=3", "grpo.prompts_per_step=4", "grpo.group_size=4", "grpo.max_new_tokens=4", "grpo.lr=1e-3",
           "grpo.dynamic_sampling=true", "grpo.dynamic_sampling_tries=3", "grpo.samples_every=0"]
ODD_PROMPTS = ("def reward(prompts, completions, **kw):\n"   # signal only for prompts starting with an odd digit
               "    return [float(c[:1] in '0123') if int(p[0]) % 2 else 1.0 for p, c in zip(prompts, completions)]\n")


def ddp_run(root: Path, *extra: str):
    return tiny_config(*DDP_RUN, f'grpo.rewards=["{root / "odd.py"}:reward"]', *extra)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The 2-process results (one torchrun launch: the synthetic rounds, then a real SFT -> GRPO run
    with dynamic sampling under DDP) and, meanwhile, the one-process run of the same global batches."""
    out = tmp_path_factory.mktemp("dynamic")
    (out / "odd.py").write_text(ODD_PROMPTS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, str(out)]
    launched = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert run_in_process(ddp_run(out, "sft.grad_accum=8"), out / "one") == 0
        log, _ = launched.communicate(timeout=TIMEOUT)
    finally:
        if launched.poll() is None:
            launched.kill()
    assert launched.returncode == 0, log[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_keep_what_one_process_keeps(two_processes):
    """Round 0's signal lies in both ranks' blocks unevenly; the batch, its order and the global
    advantages are the one-process ones, each rank holding its contiguous block."""
    one, ranks = one_process_result(), torch.load(two_processes / "results.pt")
    assert [len(r["records"]) for r in ranks] == [P * G // 2] * 2
    assert [x for r in ranks for x in r["records"]] == one["records"]
    assert [x for r in ranks for x in r["rows"]] == one["rows"]
    assert torch.equal(torch.cat([r["totals"] for r in ranks]).nan_to_num(-9), one["totals"].nan_to_num(-9))
    assert torch.equal(torch.cat([r["advantages"] for r in ranks]), one["advantages"])
    assert all(r["metrics"] == one["metrics"] for r in ranks)
    assert all(r["timings"] == {"generation": 1.0 + 2.0, "scoring": 1.0} for r in ranks)   # its own 2 rounds


@pytest.mark.slow
def test_a_ddp_grpo_run_with_dynamic_sampling_matches_one_process(two_processes):
    from safetensors.torch import load_file

    from dswb.rundir import read_events

    def grpo_metrics(run_dir):
        return [e["metrics"] for e in read_events(run_dir / "events.jsonl", ("metrics",)) if e["stage"] == "grpo"]

    one, ddp = grpo_metrics(two_processes / "one"), grpo_metrics(two_processes / "ddp")
    assert len(ddp) == 3 and max(m["dynamic_sampling/rounds"] for m in one) > 1
    for key in ("dynamic_sampling/rounds", "dynamic_sampling/groups_kept", "dynamic_sampling/groups_generated",
                "rows_trained"):
        assert [m[key] for m in ddp] == [m[key] for m in one], key
    for key in ("loss", "reward", "grad_norm"):
        assert [m[key] for m in ddp] == pytest.approx([m[key] for m in one], rel=1e-4, abs=1e-7), key
    a, b = (load_file(str(r / "final" / "grpo" / "model.safetensors")) for r in (two_processes / "one",
                                                                                 two_processes / "ddp"))
    # Adam turns float rounding in near-zero gradients into steps of up to lr (1e-3): allow a tenth of one
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def _worker(out: Path) -> None:
    from dswb.engine.distributed.world import ensure_world, shutdown
    world = ensure_world(tiny_config("parallel.mode=ddp", "run.device=cpu"))
    sampled = dynamic_sample(fake_round, G, P, tries=4, pad_id=PAD)
    exp = sampled.experience
    mine = {"records": [r.prompt for r in exp.records], "totals": exp.scores.total, "rows": _rows(exp),
            "metrics": sampled.metrics(), "timings": exp.timings,
            "advantages": global_advantages(exp.scores.total, lambda every: group_advantages(every, G, "reinforce_pp"))}
    results = world.all_gather(mine)
    if world.is_main:
        torch.save(results, out / "results.pt")
    code = run_in_process(ddp_run(out, "parallel.mode=ddp", "sft.grad_accum=4"), out / "ddp")
    shutdown(code, clean=code == 0)


# --- a stage run ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("base") / "run"
    assert run_in_process(tiny_config(), run_dir) == 0
    return run_dir / "final" / "pretrain"


@pytest.mark.slow
def test_a_grpo_run_with_dynamic_sampling_resumes_bitwise(tmp_path, pretrained):
    from safetensors.torch import load_file

    from dswb.rundir import read_events, read_status
    from tests.test_resume_faults import StopAtStep

    (tmp_path / "odd.py").write_text(   # signal only for prompts starting with an odd digit: most groups have none
        "def reward(prompts, completions, **kw):\n"
        "    return [float(c[:1] in '01') if int(p[0]) % 2 else 1.0 for p, c in zip(prompts, completions)]\n")
    cfg = tiny_config('run.stages=["grpo"]', "checkpoint.every=2", f'grpo.init="{pretrained}"', "grpo.steps=4",
                      "grpo.lr=1e-4", "grpo.prompts_per_step=4", "grpo.group_size=4", "grpo.max_new_tokens=5",
                      "grpo.dynamic_sampling=true", "grpo.dynamic_sampling_tries=3", "grpo.samples_every=0",
                      f'grpo.rewards=["{tmp_path}/odd.py:reward"]')
    straight = tmp_path / "straight"
    assert run_in_process(cfg, straight) == 0
    metrics = [e["metrics"] for e in read_events(straight / "events.jsonl", ("metrics",))]
    assert all({"dynamic_sampling/rounds", "dynamic_sampling/groups_kept", "dynamic_sampling/groups_generated"}
               <= set(m) for m in metrics)
    assert max(m["dynamic_sampling/rounds"] for m in metrics) > 1
    assert all(m["dynamic_sampling/groups_generated"] == 4 * m["dynamic_sampling/rounds"] for m in metrics)
    assert all(m["frac_reward_zero_std"] == 0 for m in metrics if m["dynamic_sampling/groups_kept"] == 4)

    interrupted = tmp_path / "interrupted"
    assert run_in_process(cfg, interrupted, reporter=StopAtStep(interrupted, 2)) == 130
    assert read_status(interrupted / "status.json")["step"] == 2
    assert run_in_process(cfg, interrupted, resume=True) == 0
    a = load_file(str(straight / "final" / "grpo" / "model.safetensors"))
    b = load_file(str(interrupted / "final" / "grpo" / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    resumed = [e["metrics"] for e in read_events(interrupted / "events.jsonl", ("metrics",))]
    assert [m["loss"] for m in resumed] == [m["loss"] for m in metrics]
    assert [m["dynamic_sampling/rounds"] for m in resumed] == [m["dynamic_sampling/rounds"] for m in metrics]


if __name__ == "__main__":
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    _worker(Path(sys.argv[1]))
