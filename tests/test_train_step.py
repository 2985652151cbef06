"""The training step: gradient accumulation weights every token equally, whatever the
micro-batch sizes, so two micro-batches give the same update as one batch of both."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dswb.engine.data.batches.collate import collate_padded
from dswb.engine.train.step import train_step


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def _update(micro_batches) -> dict[str, torch.Tensor]:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    result = train_step(model, opt, micro_batches, torch.device("cpu"), None, clip_grad=0.0)
    assert result.finite
    return {k: model.state_dict()[k] - before[k] for k in before}, result


def test_accumulated_micro_batches_equal_one_batch():
    g = torch.Generator().manual_seed(1)
    short = [torch.randint(3, 40, (n,), generator=g).tolist() for n in (3, 4, 5)]
    long = [torch.randint(3, 40, (n,), generator=g).tolist() for n in (20,)]
    split, r1 = _update([collate_padded(short, 0), collate_padded(long, 0)])
    whole, r2 = _update([collate_padded(short + long, 0)])
    assert r1.n_target == r2.n_target == 2 + 3 + 4 + 19
    assert abs(r1.loss - r2.loss) < 1e-5
    for name in split:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6)


def test_mean_of_micro_batch_means_would_differ():
    """The naive average (mean loss per micro-batch, then averaged) weights the short
    micro-batch's tokens 19/12 times more: the test above would catch that mistake."""
    from dswb.engine.train.losses import token_loss_sum

    g = torch.Generator().manual_seed(1)
    short = collate_padded([torch.randint(3, 40, (n,), generator=g).tolist() for n in (3, 4, 5)], 0)
    long = collate_padded([torch.randint(3, 40, (20,), generator=g).tolist()], 0)
    model = _model()
    with torch.no_grad():
        l_short = float(token_loss_sum(model(**short.model_inputs()).logits, short.labels))
        l_long = float(token_loss_sum(model(**long.model_inputs()).logits, long.labels))
    naive = 0.5 * (l_short / short.n_target + l_long / long.n_target)
    weighted = (l_short + l_long) / (short.n_target + long.n_target)
    assert abs(naive - weighted) > 1e-4
