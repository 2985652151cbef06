"""The invariance contract: how a global batch is cut up never changes the update.

For pretraining, SFT, the reward model and DPO, the same global batch gives the same loss and the
same gradients (fp32 on the CPU, `|g1 - g2| / |g1| <= 1e-6` over all parameters, the loss within
1e-6 relative) as 1 micro-batch, as 2 or 4 accumulated ones, on 1 or 2 processes (DDP over gloo,
under torchrun), and (pretraining and SFT) packed or bucketed. For PPO and GRPO (every advantage
estimator and loss aggregation) the policy update is the same across `grad_accum` and across 1 and
2 processes. The functions under test are the ones the stages call (`lm_backward`,
`reward_backward`, `dpo_backward`, `grpo_update`, `ppo_update`), on real tiny transformers models.

One torchrun launch of this file (2 processes) computes every 2-process case; the 1-process cases
run in the test process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from dswb.engine.data.batches.collate import collate_packed, collate_padded
from dswb.engine.data.batches.pairs import EncodedPair
from dswb.engine.preference.scoring import reference_logprobs
from dswb.engine.rl.advantages import group_advantages, zero_std_groups
from dswb.engine.rl.global_batch import global_advantages
from dswb.engine.rl.rollout import Rollouts
from dswb.engine.stages.dpo import dpo_backward
from dswb.engine.stages.grpo import attach_logprobs, grpo_update, update_rows
from dswb.engine.stages.ppo import PolicyAndValue, ppo_batch, ppo_update
from dswb.engine.stages.rm import reward_backward
from dswb.engine.train.step import lm_backward

CPU = torch.device("cpu")
VOCAB, PAD = 40, 0
TOL = 1e-6
TIMEOUT = 240
ADVANTAGES = ("grpo", "rloo", "reinforce_pp")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")


# --- tiny real models and data ------------------------------------------------------------------

def llama_config(**extra) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       pad_token_id=PAD, attn_implementation="sdpa", **extra)


def causal_lm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config())


def scalar_model(seed: int = 1) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(llama_config(num_labels=1))


def sequences(n: int, seed: int, lo: int = 3, hi: int = 20) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lengths]


def completion_masks(samples: list[list[int]], seed: int) -> list[list[int]]:
    """SFT-style loss masks: the first 1-3 tokens are the prompt (no loss)."""
    g = torch.Generator().manual_seed(seed)
    return [[0] * (p := int(torch.randint(1, 4, (1,), generator=g))) + [1] * (len(s) - p) for s in samples]


def pairs(n: int, seed: int) -> list[EncodedPair]:
    chosen, rejected = sequences(n, seed, 4, 14), sequences(n, seed + 1, 4, 14)
    out = []
    for c, r in zip(chosen, rejected):
        prompt = c[:2]
        r = prompt + r[2:]
        out.append(EncodedPair(c, [0, 0] + [1] * (len(c) - 2), r, [0, 0] + [1] * (len(r) - 2)))
    return out


def flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def split(items: list, parts: int) -> list[list]:
    size = -(-len(items) // parts)
    return [items[i:i + size] for i in range(0, len(items), size)]


def rank_share(parts: list, rank: int, size: int) -> list:
    """Rank r takes parts r, r + R, ... (as the pair and batch streams shard)."""
    return parts[rank::size]


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients of every step it takes."""

    def __init__(self, params, lr: float = 0.05) -> None:
        super().__init__(params, lr=lr)
        self.seen: list[torch.Tensor] = []

    def step(self, closure=None):
        self.seen.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                    for g in self.param_groups for p in g["params"]]))
        return super().step(closure)


def wrap(model: torch.nn.Module, world) -> torch.nn.Module:
    if world is None:
        return model
    from dswb.engine.distributed.wrap import distribute

    return distribute(model, tiny_config("parallel.mode=ddp", "run.device=cpu"), CPU, world)


# --- the cases: each returns (loss, gradients) or the recorded gradients of every update ---------

LM_SAMPLES = sequences(16, seed=11)
SFT_MASKS = completion_masks(LM_SAMPLES, seed=12)


def lm_case(parts: int, *, masked: bool = False, packed: bool = False, rank: int = 0, size: int = 1,
            world=None) -> tuple[float, torch.Tensor]:
    """The global batch LM_SAMPLES cut into `parts` micro-batches (bucketed: padded rows; packed:
    two documents a row), this rank taking its share of them."""
    masks = SFT_MASKS if masked else None
    model = wrap(causal_lm(), world)
    index = list(range(len(LM_SAMPLES)))
    micro = []
    for chunk in rank_share(split(index, parts), rank, size):
        if packed:
            rows = [[(i, 0, len(LM_SAMPLES[i])) for i in chunk[k:k + 2]] for k in range(0, len(chunk), 2)]
            micro.append(collate_packed(rows, LM_SAMPLES, PAD, row_len=64, loss_masks=masks))
        else:
            micro.append(collate_padded([LM_SAMPLES[i] for i in chunk], PAD,
                                        loss_masks=None if masks is None else [masks[i] for i in chunk]))
    loss = lm_backward(model, micro, CPU, None)
    return loss, flat_grads(model)


PAIRS = pairs(16, seed=21)


def rm_case(parts: int, rank: int = 0, size: int = 1, world=None) -> tuple[float, torch.Tensor]:
    model = wrap(scalar_model(), world)
    micro = rank_share(split(PAIRS, parts), rank, size)
    loss, _, _ = reward_backward(model, micro, PAD, CPU, None, center_coef=0.01)
    return loss, flat_grads(model)


def dpo_case(parts: int, live_ref: bool = False, rank: int = 0, size: int = 1, world=None) -> tuple[float, torch.Tensor]:
    ref = causal_lm(seed=5).eval().requires_grad_(False)
    section = tiny_config('run.stages=["dpo"]', "dpo.beta=0.2").dpo
    ref_lp = reference_logprobs(ref, PAIRS, PAD, CPU, None, average=False)
    policy = wrap(causal_lm(), world)
    micro = [torch.tensor(c) for c in rank_share(split(list(range(len(PAIRS))), parts), rank, size)]
    loss, _, _ = dpo_backward(policy, micro, PAIRS, ref_lp, ref if live_ref else None, PAD, CPU, None, section)
    return loss, flat_grads(policy)


def rollouts(n_prompts: int, group: int, seed: int = 31, width: int = 6) -> tuple[Rollouts, torch.Tensor]:
    """Completions of varied lengths (some truncated) and a reward that varies within most groups."""
    g = torch.Generator().manual_seed(seed)
    prompts = sequences(n_prompts, seed, 2, 6)
    rows = n_prompts * group
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.randint(3, VOCAB, (rows, width), generator=g) * mask + PAD * (1 - mask)
    rewards = torch.randint(0, 3, (rows,), generator=g).float()
    rewards[:group] = 1.0                                    # one zero-variance group
    r = Rollouts(prompt_ids=[prompts[i // group] for i in range(rows)],
                 prompt_index=torch.arange(rows) // group, completion_ids=ids, completion_mask=mask,
                 logprobs=torch.zeros(rows, width), ended=lengths < width, lengths=lengths)
    return r, rewards


def grpo_case(grad_accum: int, *, advantage: str = "grpo", loss_type: str = "dapo", extra: tuple = (),
              rank: int = 0, size: int = 1, world=None) -> list[torch.Tensor]:
    G, n_prompts = 4, 6
    sec = tiny_config('run.stages=["grpo"]', 'grpo.rewards=["exact_match"]', f"grpo.group_size={G}", f"grpo.advantage={advantage}",
                      f"grpo.loss_type={loss_type}", f"grpo.grad_accum={grad_accum}", "grpo.max_new_tokens=6",
                      "grpo.clip_grad=0", *extra).grpo
    r, rewards = rollouts(n_prompts, G)
    lo, hi = n_prompts * G * rank // size, n_prompts * G * (rank + 1) // size   # whole groups per rank
    r, rewards = r.select(torch.arange(lo, hi)), rewards[lo:hi]
    adv = global_advantages(rewards, lambda every: group_advantages(every, G, sec.advantage, sec.scale_rewards))
    policy = wrap(causal_lm(), world)
    ref = causal_lm(seed=5).eval().requires_grad_(False) if sec.beta > 0 else None
    batch = update_rows(r, adv, zero_std_groups(rewards, G), sec, skip_zero_advantage=ref is None, device=CPU)
    with torch.no_grad():
        attach_logprobs(batch, policy, ref, sec, None, PAD)
    optimizer = RecordingSGD(policy.parameters())
    stats = grpo_update(policy, optimizer, batch, sec, None, PAD)
    assert stats.finite_everywhere() and stats.updates == sec.num_iterations * sec.minibatches
    return optimizer.seen


def ppo_case(grad_accum: int, *, extra: tuple = (), rank: int = 0, size: int = 1, world=None) -> list[torch.Tensor]:
    sec = tiny_config('run.stages=["ppo"]', 'ppo.rewards=["exact_match"]', f"ppo.grad_accum={grad_accum}", "ppo.clip_grad=0", *extra).ppo
    r, scores = rollouts(4, 4, seed=41)
    lo, hi = len(r) * rank // size, len(r) * (rank + 1) // size
    r, scores = r.select(torch.arange(lo, hi)), scores[lo:hi]
    model = PolicyAndValue(wrap(causal_lm(), world), wrap(scalar_model(), world))
    ref = causal_lm(seed=0).eval().requires_grad_(False)
    with torch.no_grad():
        batch = ppo_batch(model.policy, model.value, ref, r, scores, sec, CPU, None, PAD)
    optimizer = RecordingSGD(model.parameters())
    stats = ppo_update(model, optimizer, batch, sec, torch.Generator().manual_seed(7), None, PAD)
    assert stats.finite_everywhere()
    return optimizer.seen


def rl_variants() -> dict[str, dict]:
    cases = {f"grpo-{a}-{lt}": {"advantage": a, "loss_type": lt} for a in ADVANTAGES for lt in LOSS_TYPES}
    cases["grpo-kl-reuse"] = {"extra": ("grpo.beta=0.04", "grpo.minibatches=2", "grpo.num_iterations=2")}
    cases["grpo-masked"] = {"extra": ("grpo.mask_truncated=true", "grpo.drop_zero_variance=true")}
    return cases


# --- comparisons ------------------------------------------------------------------------------

def assert_same(a: tuple[float, torch.Tensor], b: tuple[float, torch.Tensor]) -> None:
    (la, ga), (lb, gb) = a, b
    assert abs(la - lb) <= TOL * abs(la), (la, lb)
    assert float(ga.norm()) > 0
    assert float((ga - gb).norm() / ga.norm()) <= TOL


def assert_same_updates(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = TOL) -> None:
    assert len(a) == len(b) and a
    for ga, gb in zip(a, b):
        assert float(ga.norm()) > 0
        assert float((ga - gb).norm() / ga.norm()) <= tol


@pytest.mark.parametrize("masked", [False, True], ids=["pretrain", "sft"])
def test_lm_loss_and_gradients_do_not_depend_on_micro_batches_or_packing(masked):
    one = lm_case(1, masked=masked)
    for parts in (2, 4):
        assert_same(one, lm_case(parts, masked=masked))
    assert_same(one, lm_case(1, masked=masked, packed=True))
    assert_same(one, lm_case(4, masked=masked, packed=True))


def test_mean_of_micro_batch_means_is_caught():
    """The contract can fail: averaging per-micro-batch means weights short micro-batches' tokens
    more, and the comparison above sees it."""
    _, whole = lm_case(1)
    model, grads = causal_lm(), []
    for half in split(LM_SAMPLES, 2):
        model.zero_grad(set_to_none=True)
        lm_backward(model, [collate_padded(half, PAD)], CPU, None)
        grads.append(flat_grads(model))
    naive = (grads[0] + grads[1]) / 2
    assert float((whole - naive).norm() / whole.norm()) > 1e-3


def test_reward_model_and_dpo_gradients_do_not_depend_on_micro_batches():
    for case in (rm_case, dpo_case, lambda parts: dpo_case(parts, live_ref=True)):
        one = case(1)
        for parts in (2, 4):
            assert_same(one, case(parts))
    assert_same(dpo_case(1), dpo_case(4, live_ref=True))


@pytest.mark.parametrize("name", sorted(rl_variants()))
def test_grpo_update_does_not_depend_on_grad_accum(name):
    kwargs = rl_variants()[name]
    one = grpo_case(1, **kwargs)
    for accum in (2, 5):
        assert_same_updates(one, grpo_case(accum, **kwargs))


def test_ppo_update_does_not_depend_on_grad_accum():
    extra = ("ppo.epochs=2", "ppo.minibatches=2")
    one = ppo_case(1, extra=extra)
    assert len(one) == 4
    for accum in (2, 3):
        assert_same_updates(one, ppo_case(accum, extra=extra))


# --- two processes ----------------------------------------------------------------------------

def two_process_cases() -> dict:
    """name -> a function of (rank, size, world) computing this rank's share, and its 1-process twin."""
    cases = {
        "pretrain": (lambda **w: lm_case(2, **w), lambda: lm_case(1)),
        "pretrain-packed": (lambda **w: lm_case(4, packed=True, **w), lambda: lm_case(1)),
        "sft": (lambda **w: lm_case(4, masked=True, **w), lambda: lm_case(1, masked=True)),
        "rm": (lambda **w: rm_case(2, **w), lambda: rm_case(1)),
        "dpo": (lambda **w: dpo_case(2, **w), lambda: dpo_case(1)),
        "ppo": (lambda **w: ppo_case(1, **w), lambda: ppo_case(1)),
    }
    for name, kwargs in rl_variants().items():
        if "reuse" in name:   # several minibatches: each global minibatch is the union of the ranks' parts
            continue
        cases[name] = (lambda kw=kwargs, **w: grpo_case(2, **kw, **w), lambda kw=kwargs: grpo_case(1, **kw))
    return cases


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("contract")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return torch.load(out / "results.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(two_process_cases()))
def test_two_processes_compute_what_one_process_computes(two_processes, name):
    one = two_process_cases()[name][1]()
    two = two_processes[name]
    if isinstance(one, list):
        assert_same_updates(one, two)
    else:
        assert_same(one, two)


def _worker(out: Path) -> None:
    from dswb.engine.distributed.world import ensure_world, shutdown

    world = ensure_world(tiny_config("parallel.mode=ddp", "run.device=cpu"))
    results = {}
    for name, (share, _) in two_process_cases().items():
        result = share(rank=world.rank, size=world.size, world=world)
        if isinstance(result, tuple):   # the loss a run reports: the mean of the ranks' (`reduce_metrics`)
            result = (world.sum([result[0]])[0] / world.size, result[1])
        results[name] = result
    if world.is_main:
        torch.save(results, out / "results.pt")
    shutdown(0)


if __name__ == "__main__":
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    _worker(Path(sys.argv[1]))
