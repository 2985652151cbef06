"""GRPO's loss normalisers count every generated row: a row out of the loss (truncated with
`mask_truncated`, in a group dropped by `drop_zero_variance`, unscorable) adds 0 to the sum but stays
in the sequence count, as in TRL where its mask is zero; the token count is the tokens in the loss.

The reference is TRL's aggregation written out by hand on the same tensors: `grpo` takes the mean of
each sequence's tokens, then the mean over all B rows; `dr_grpo` divides the sum by
B * max_new_tokens; `dapo` by the number of tokens in the loss."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config
from transformers import LlamaConfig, LlamaForCausalLM

from dswb.engine.rl.advantages import group_advantages, zero_std_groups
from dswb.engine.rl.rollout import Rollouts, sequence_logprobs
from dswb.engine.stages.grpo import attach_logprobs, grpo_update, update_rows

CPU = torch.device("cpu")
VOCAB, PAD, G, WIDTH = 40, 0, 4, 6
NAN = float("nan")


def causal_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=PAD, attn_implementation="sdpa"))


def eight_rows() -> Rollouts:
    """2 prompts x 4 completions; rows 1 and 6 hit max_new_tokens (WIDTH) without ending."""
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([3, WIDTH, 2, 5, 1, 4, WIDTH, 2])
    mask = (torch.arange(WIDTH).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.randint(3, VOCAB, (8, WIDTH), generator=g) * mask
    prompts = [[1, 5, 7], [1, 9, 4, 11]]
    return Rollouts(prompt_ids=[prompts[i // G] for i in range(8)], prompt_index=torch.arange(8) // G,
                    completion_ids=ids, completion_mask=mask, logprobs=torch.zeros(8, WIDTH),
                    ended=lengths < WIDTH, lengths=lengths)


def section(loss_type: str, *extra: str):
    return tiny_config('run.stages=["grpo"]', 'grpo.rewards=["exact_match"]', f"grpo.group_size={G}",
                       f"grpo.loss_type={loss_type}", f"grpo.max_new_tokens={WIDTH}", "grpo.clip_grad=0",
                       *extra).grpo


class RecordingSGD(torch.optim.SGD):
    def __init__(self, params) -> None:
        super().__init__(params, lr=0.1)
        self.seen: list[torch.Tensor] = []

    def step(self, closure=None):
        self.seen.append(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]]))
        return super().step(closure)


def dswb_step(r: Rollouts, rewards: torch.Tensor, sec) -> tuple[float, torch.Tensor]:
    """(loss, gradient) of one GRPO update as the stage makes it."""
    policy = causal_lm()
    adv = group_advantages(rewards, G, sec.advantage, sec.scale_rewards)
    batch = update_rows(r, adv, zero_std_groups(rewards, G), sec, skip_zero_advantage=True, device=CPU,
                        unscorable=torch.isnan(rewards))
    with torch.no_grad():
        attach_logprobs(batch, policy, None, sec, None, PAD)
    optimizer = RecordingSGD(policy.parameters())
    stats = grpo_update(policy, optimizer, batch, sec, None, PAD)
    assert stats.updates == 1
    return stats.step_mean("loss"), optimizer.seen[0]


def trl_step(r: Rollouts, advantages: torch.Tensor, loss_mask: torch.Tensor,
             loss_type: str) -> tuple[float, torch.Tensor]:
    """TRL's on-policy loss (ratio 1) on the same rows: per-token -A * ratio, aggregated by `loss_type`."""
    policy = causal_lm()
    logp, _ = sequence_logprobs(policy, r.prompt_ids, r.completion_ids, r.completion_mask, pad_id=PAD)
    per_token = -advantages.unsqueeze(1) * torch.exp(logp - logp.detach())
    m = loss_mask.float()
    B = len(r)
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "dr_grpo":
        loss = (per_token * m).sum() / (B * WIDTH)
    else:
        loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.flatten() for p in policy.parameters()])


def assert_same(a: tuple[float, torch.Tensor], b: tuple[float, torch.Tensor]) -> None:
    (la, ga), (lb, gb) = a, b
    assert la == pytest.approx(lb, rel=1e-6, abs=1e-7)   # ratio 1: the loss is -mean(A), near 0
    assert float(gb.norm()) > 0 and float((ga - gb).norm() / gb.norm()) <= 1e-6


@pytest.mark.parametrize("grad_accum", [1, 3])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_two_of_eight_truncated_gives_trls_loss(loss_type, grad_accum):
    r = eight_rows()
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0])
    sec = section(loss_type, "grpo.mask_truncated=true", f"grpo.grad_accum={grad_accum}")
    trl_mask = r.completion_mask * r.ended.long().unsqueeze(1)   # TRL zeroes a truncated row's mask
    assert int((~r.ended).sum()) == 2
    want = trl_step(r, group_advantages(rewards, G), trl_mask, loss_type)
    assert_same(dswb_step(r, rewards, sec), want)


def test_the_old_normaliser_would_be_off_by_b_over_kept():
    """Guard on the reference: counting only the 6 kept rows gives 8/6 of TRL's grpo loss."""
    r = eight_rows()
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0])
    loss, _ = dswb_step(r, rewards, section("grpo", "grpo.mask_truncated=true"))
    trl_mask = r.completion_mask * r.ended.long().unsqueeze(1)
    want, _ = trl_step(r, group_advantages(rewards, G), trl_mask, "grpo")
    assert loss == pytest.approx(want, rel=1e-6) and abs(loss * 8 / 6 - want) > 1e-3 * abs(want)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_unscorable_rows_count_in_b_with_advantage_zero(loss_type):
    """Rows 2 and 5 are unscorable: TRL gives them advantage 0 and keeps them in B, as dswb does."""
    r = eight_rows()
    rewards = torch.tensor([1.0, 0.0, NAN, 1.0, 2.0, NAN, 1.0, 1.0])
    adv = group_advantages(rewards, G)
    assert adv[2] == 0 and adv[5] == 0
    want = trl_step(r, adv, r.completion_mask, loss_type)
    assert_same(dswb_step(r, rewards, section(loss_type)), want)


def test_unscorable_rows_are_out_of_the_token_count():
    """dapo: an unscorable row is a masked row, its tokens out of the normaliser (TRL still counts them)."""
    r = eight_rows()
    rewards = torch.tensor([1.0, 0.0, NAN, 1.0, 2.0, NAN, 1.0, 1.0])
    mask = r.completion_mask * (~torch.isnan(rewards)).long().unsqueeze(1)
    want = trl_step(r, group_advantages(rewards, G), mask, "dapo")
    assert_same(dswb_step(r, rewards, section("dapo")), want)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_a_dropped_group_is_a_masked_group(loss_type):
    """drop_zero_variance: the second group (all rewards equal) has a zero mask and still counts in B."""
    r = eight_rows()
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3])
    mask = r.completion_mask.clone()
    mask[G:] = 0
    want = trl_step(r, group_advantages(rewards, G), mask, loss_type)
    assert_same(dswb_step(r, rewards, section(loss_type, "grpo.drop_zero_variance=true")), want)


def test_every_generated_row_is_in_the_batch_and_only_signal_is_trained():
    r = eight_rows()
    rewards = torch.tensor([1.0, 0.0, NAN, 1.0, 0.3, 0.3, 0.3, 0.3])
    sec = section("grpo", "grpo.mask_truncated=true")
    adv = group_advantages(rewards, G)
    batch = update_rows(r, adv, zero_std_groups(rewards, G), sec, skip_zero_advantage=True, device=CPU,
                        unscorable=torch.isnan(rewards))
    assert batch.rows == list(range(8))
    assert batch.scored == [0, 3]                       # 1 truncated, 2 unscorable, 4..7 advantage 0
    assert batch.mask[[1, 2]].sum() == 0 and batch.mask[[4, 5, 7]].sum() > 0
