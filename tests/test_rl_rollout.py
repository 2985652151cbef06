"""The rollout sampler (`dswb.engine.rl.rollout`) on a real tiny Llama, and on a fixed-logit fake."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForCausalLM

from dswb.engine.model.build import llama_config
from dswb.engine.data.batches.collate import left_pad
from dswb.engine.rl.rollout import HFRolloutSampler, sequence_logprobs
from dswb.engine.rl.sampling import top_p_mask

PAD, BOS, EOS, VOCAB = 0, 1, 2, 16
PROMPTS = [[BOS, 5], [BOS, 7, 8, 9, 10, 11], [BOS], [BOS, 3, 14, 15, 6, 7, 8, 9, 4]]
VARIANTS = {"default": {}, "plain": {"preallocate": False, "shrink": 0.0, "share_prefill": False},
            "chunks of 3": {"batch_size": 3},
            "check every 3": {"check_every": 3}, "shrink early": {"shrink": 0.99}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = llama_config("tiny", VOCAB, 64, BOS, EOS, PAD)
    cfg.initializer_range = 0.2  # peaked, varied predictions (the default 0.02 predicts nearly uniform logits)
    return LlamaForCausalLM(cfg).eval()


def _rollouts(model, prompts=PROMPTS, sampler_kw=None, **kw):
    kw.setdefault("max_new_tokens", 12)
    return HFRolloutSampler(model, PAD, "cpu", **(sampler_kw or {})).generate(prompts, **kw)


def _hf_greedy(model, prompts, max_new, eos):
    ids, mask = left_pad(prompts, PAD)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                         pad_token_id=PAD, eos_token_id=eos)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_equals_generate_for_left_padded_prompts(model, variant):
    r = _rollouts(model, sampler_kw=VARIANTS[variant], temperature=0.0)
    assert torch.equal(r.completion_ids, _hf_greedy(model, PROMPTS, 12, None))
    assert r.completion_mask.bool().all() and not r.ended.any()
    assert r.lengths.tolist() == [12] * 4


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_with_stop_ids_equals_generate_with_eos(model, variant):
    stop = 15  # the token some of these rows predict early; generate treats it as eos
    r = _rollouts(model, sampler_kw=VARIANTS[variant], temperature=0.0, stop_ids=[stop])
    hf = _hf_greedy(model, PROMPTS, 12, stop)
    assert torch.equal(r.completion_ids, hf)
    assert r.ended.any() and not r.ended.all()


def test_logprobs_equal_sequence_logprobs_and_entropy_is_the_distributions(model):
    r = _rollouts(model, samples_per_prompt=3, temperature=0.7, top_p=0.9, stop_ids=[EOS, 12],
                  generator=torch.Generator().manual_seed(0))
    assert len(set(r.lengths.tolist())) > 2  # rows of different completion lengths, as well as prompts
    logp, entropy = sequence_logprobs(model, r.prompt_ids, r.completion_ids, r.completion_mask, temperature=0.7)
    # the sampler's cached, token-by-token forward and one full forward sum in other orders (1.4e-5 seen)
    assert torch.allclose(logp, r.logprobs, atol=5e-5, rtol=0)
    mask = r.completion_mask.bool()
    assert (logp[~mask] == 0).all() and (entropy[~mask] == 0).all() and (r.logprobs[~mask] == 0).all()
    for row in (0, 4, 10):  # each row alone, unpadded, scored directly
        n, prompt = int(r.lengths[row]), r.prompt_ids[row]
        ids = torch.tensor([prompt + r.completion_ids[row, :n].tolist()])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1] / 0.7
        dist = torch.log_softmax(logits, -1)
        assert torch.allclose(entropy[row, :n], -(dist.exp() * dist).sum(-1), atol=1e-5)
        assert torch.allclose(logp[row, :n], dist.gather(1, ids[0, len(prompt):, None]).squeeze(1), atol=1e-5)


def test_greedy_logprobs_are_scored_at_temperature_one(model):
    r = _rollouts(model, temperature=0.0, max_new_tokens=5)
    logp, _ = sequence_logprobs(model, r.prompt_ids, r.completion_ids, r.completion_mask, temperature=1.0)
    assert torch.allclose(logp, r.logprobs, atol=1e-5, rtol=0)


def test_sequence_logprobs_carries_gradients(model):
    r = _rollouts(model, max_new_tokens=4, generator=torch.Generator().manual_seed(1))
    model.zero_grad()
    logp, entropy = sequence_logprobs(model, r.prompt_ids, r.completion_ids, r.completion_mask)
    (logp.sum() + entropy.sum()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)  # left padding leaks no NaN
    assert model.lm_head.weight.grad.abs().sum() > 0 and model.model.embed_tokens.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_seeded_generator_is_deterministic_and_chunking_does_not_change_rows(model):
    kw = dict(samples_per_prompt=2, temperature=1.0, stop_ids=[EOS])
    base = _rollouts(model, generator=torch.Generator().manual_seed(5), **kw)
    again = _rollouts(model, generator=torch.Generator().manual_seed(5), **kw)
    other = _rollouts(model, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(base.completion_ids, again.completion_ids) and torch.equal(base.logprobs, again.logprobs)
    assert not torch.equal(base.completion_ids, other.completion_ids)
    for variant in ({"batch_size": 1}, {"batch_size": 3}, VARIANTS["plain"]):
        chunked = _rollouts(model, sampler_kw=variant, generator=torch.Generator().manual_seed(5), **kw)
        assert torch.equal(chunked.completion_ids, base.completion_ids), variant
        assert torch.allclose(chunked.logprobs, base.logprobs, atol=1e-5), variant


def test_stop_ids_end_rows_and_mask_the_rest(model):
    stops = {EOS, 12, 15}
    r = _rollouts(model, samples_per_prompt=4, max_new_tokens=10, stop_ids=sorted(stops),
                  generator=torch.Generator().manual_seed(2))
    assert r.ended.any() and not r.ended.all()
    for row in range(len(r)):
        n = int(r.lengths[row])
        live = r.completion_ids[row, :n].tolist()
        assert r.completion_mask[row].tolist() == [1] * n + [0] * (r.completion_ids.shape[1] - n)
        assert (r.completion_ids[row, n:] == PAD).all() and (r.logprobs[row, n:] == 0).all()
        assert (r.logprobs[row, :n] < 0).all()
        assert not stops & set(live[:-1])  # nothing after the first stop token
        assert bool(r.ended[row]) == (live[-1] in stops)
        if not r.ended[row]:
            assert n == 10
    assert r.completion_ids.shape[1] == int(r.lengths.max())


def test_samples_per_prompt_are_grouped_by_prompt(model):
    r = _rollouts(model, samples_per_prompt=3, max_new_tokens=6, generator=torch.Generator().manual_seed(3))
    assert r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert r.prompt_ids == [p for p in PROMPTS for _ in range(3)]
    assert r.completion_ids.shape == (12, 6) and r.logprobs.dtype == torch.float32
    groups = r.completion_ids.view(4, 3, 6)
    assert any(not torch.equal(g[0], g[1]) or not torch.equal(g[1], g[2]) for g in groups)
    part = r.select(torch.tensor([1, 5, 11]))
    assert part.prompt_ids == [PROMPTS[0], PROMPTS[1], PROMPTS[3]] and part.prompt_index.tolist() == [0, 1, 3]
    assert torch.equal(part.completion_ids, r.completion_ids[[1, 5, 11]])
    assert len(r.select(r.prompt_index == 2)) == 3


def test_edge_cases_one_new_token_and_a_one_token_prompt(model):
    r = _rollouts(model, prompts=[[BOS]], max_new_tokens=1, generator=torch.Generator().manual_seed(0))
    assert r.completion_ids.shape == (1, 1) and r.lengths.tolist() == [1] and r.completion_mask.tolist() == [[1]]
    greedy = _rollouts(model, prompts=[[BOS], [BOS, 4]], max_new_tokens=1, temperature=0.0)
    assert torch.equal(greedy.completion_ids, _hf_greedy(model, [[BOS], [BOS, 4]], 1, None))


def test_model_mode_is_restored(model):
    model.train()
    try:
        r = _rollouts(model, temperature=0.0, max_new_tokens=3)
        assert model.training
        assert torch.equal(r.completion_ids, _hf_greedy(model.eval(), PROMPTS, 3, None))
    finally:
        model.eval()


def test_bad_arguments_raise():
    sampler = HFRolloutSampler(_FixedLogits([0.0] * 4), PAD, "cpu")
    for prompts, kw in (([], {}), ([[BOS], []], {}), ([[BOS]], {"max_new_tokens": 0}), ([[BOS]], {"top_p": 0.0})):
        with pytest.raises(ValueError):
            sampler.generate(prompts, **{"max_new_tokens": 2, **kw})


class _FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits are always the same, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.config = llama_config("tiny", len(logits), 64, BOS, EOS, PAD)
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.logits.expand(input_ids.shape[0], 1, -1))


def test_every_row_ending_at_the_first_step():
    fake = _FixedLogits([0.0, 0.0, 20.0, 0.0])  # eos (id 2) almost surely
    r = HFRolloutSampler(fake, PAD, "cpu").generate([[BOS], [BOS, 3, 3]], samples_per_prompt=4, max_new_tokens=8,
                                                    stop_ids=[EOS], generator=torch.Generator().manual_seed(0))
    assert r.completion_ids.tolist() == [[EOS]] * 8
    assert r.ended.all() and r.lengths.tolist() == [1] * 8


def test_top_p_never_samples_outside_the_nucleus_in_a_rollout():
    logits = [0.0, -9.0, 2.0, 1.5, 1.0, 0.5, -1.0, 0.2]
    fake = _FixedLogits(logits)
    r = HFRolloutSampler(fake, PAD, "cpu").generate([[BOS]] * 50, samples_per_prompt=4, max_new_tokens=20,
                                                    temperature=1.0, top_p=0.6,
                                                    generator=torch.Generator().manual_seed(4))
    nucleus = top_p_mask(torch.softmax(torch.tensor(logits), -1), 0.6)
    seen = set(r.completion_ids.unique().tolist())
    assert seen == set(nucleus.nonzero().squeeze(1).tolist())


def test_bench_counts_generate_tokens_up_to_the_first_eos():
    from dswb.bench.rollout import generated_tokens

    out = torch.tensor([[1, 5, 3, 2, 0, 0], [1, 5, 2, 0, 0, 0], [1, 5, 3, 4, 5, 6]])
    assert generated_tokens(out, 2, EOS) == 2 + 1 + 4
    assert generated_tokens(out, 2, None) == 12


def test_bench_measures_both_samplers_on_the_same_rows(model):
    from dswb.bench import rollout as bench

    prompts = [[BOS, 4, 5], [BOS, 6, 7]]
    row = bench.measure(model, prompts, 2, 5, EOS, repeats=1, pad_id=PAD)
    assert row["rows"] == 4 and 1 <= row["mean_length"] <= 5 and 1 <= row["generate_mean_length"] <= 5
    for name in ("sampler", "plain loop", "generate"):
        assert row[name]["tokens"] >= 4 and row[name]["tokens_per_s"] > 0
    table = bench.format_table({"device": "cpu", "torch_threads": 1, "model": "m", "repeats": 1, "goal": 1.5,
                                "min_speedup_at_64": row["speedup"], "min_cpu_speedup_at_64": row["cpu_speedup"],
                                "regimes": [{"name": "r", "max_new_tokens": 5, "stop_at_eos": True,
                                             "rows": [{"batch": 64, **row}]}]})
    assert "generate" in table and f"{row['speedup']:.2f}x" in table
