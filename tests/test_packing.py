"""Collation, and packing without attention across documents: packed loss == padded loss."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from dswb.engine.data.batches.collate import IGNORE_INDEX, collate_packed, collate_padded

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DOC_LENGTHS = (5, 9, 3, 12, 7, 1, 6, 10)
# Rows of (document, start, end); the last document is split across two rows.
ROWS = [[(0, 0, 5), (1, 0, 9), (2, 0, 3)],
        [(3, 0, 12), (4, 0, 7)],
        [(5, 0, 1), (6, 0, 6), (7, 0, 4)],
        [(7, 4, 10)]]


def documents() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, 64, (n,), generator=g).tolist() for n in DOC_LENGTHS]


def test_collate_padded_right_pads_and_masks_labels():
    b = collate_padded([[5, 6, 7], [8]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b.labels.tolist() == [[5, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert b.position_ids is None
    assert (b.n_real, b.n_padded, b.n_target, b.n_samples) == (4, 6, 2, 2)
    assert b.n_target == int((b.labels[:, 1:] != IGNORE_INDEX).sum())
    assert b.input_ids.dtype == torch.long


def test_collate_padded_crops_to_max_len_and_keeps_pad_id_tokens_as_labels():
    b = collate_padded([[0, 0, 0, 0], [3, 4]], pad_id=0, max_len=3)
    assert b.input_ids.shape == (2, 3)
    assert b.labels.tolist()[0] == [0, 0, 0]  # real tokens equal to pad_id still count


def test_collate_packed_positions_restart_and_boundaries_have_no_label():
    b = collate_packed([[(0, 0, 2), (1, 1, 4)], [(2, 0, 1)]], [[1, 2], [9, 3, 4, 5], [7]],
                       pad_id=0, row_len=8)
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5], [7, 0, 0, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 2, 3]]
    assert b.labels.tolist() == [[-100, 2, -100, 4, 5], [-100] * 5]
    assert b.attention_mask is None
    assert (b.n_real, b.n_padded, b.n_target, b.n_samples) == (6, 10, 3, 3)
    assert b.n_target == int((b.labels[:, 1:] != IGNORE_INDEX).sum())
    with pytest.raises(ValueError):
        collate_packed([[(1, 0, 4)]], [[1], [1, 2, 3, 4]], pad_id=0, row_len=3)


def test_batch_to_and_pin_memory_keep_counts():
    b = collate_padded([[1, 2], [3]], pad_id=0)
    moved = b.to("cpu", non_blocking=True)
    assert torch.equal(moved.input_ids, b.input_ids) and moved.n_real == b.n_real
    assert b.pin_memory().n_padded == b.n_padded  # a no-op without CUDA
    assert b.model_inputs()["use_cache"] is False


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def tiny_llama(request):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation=request.param)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def loss_sum(model, batch) -> torch.Tensor:
    """The trainer's convention: labels unshifted, shift here, sum over target tokens."""
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def padded_reference(docs):
    """The same documents (the split one as two pieces) as ordinary padded samples."""
    pieces = [docs[i][s:e] for row in ROWS for i, s, e in row]
    return collate_padded(pieces, pad_id=0)


def test_packed_loss_equals_padded_loss(tiny_llama):
    docs = documents()
    packed = collate_packed(ROWS, docs, pad_id=0, row_len=20)
    padded = padded_reference(docs)
    assert packed.n_target == padded.n_target
    assert packed.n_real == padded.n_real
    torch.testing.assert_close(loss_sum(tiny_llama, packed), loss_sum(tiny_llama, padded),
                               rtol=1e-6, atol=1e-5)


def test_packed_logits_match_each_document_alone(tiny_llama):
    docs = documents()
    packed = collate_packed(ROWS, docs, pad_id=0, row_len=20)
    with torch.no_grad():
        logits = tiny_llama(**packed.model_inputs()).logits
        for r, row in enumerate(ROWS):
            at = 0
            for i, s, e in row:
                alone = tiny_llama(input_ids=torch.tensor([docs[i][s:e]])).logits[0]
                torch.testing.assert_close(logits[r, at:at + e - s], alone, rtol=1e-5, atol=1e-5)
                at += e - s


def test_wrong_packing_gives_a_different_loss(tiny_llama):
    docs = documents()
    reference = loss_sum(tiny_llama, padded_reference(docs))
    leaky = collate_packed(ROWS, docs, pad_id=0, row_len=20)
    leaky.position_ids = torch.arange(leaky.input_ids.shape[1]).expand_as(leaky.input_ids).clone()
    assert not torch.allclose(loss_sum(tiny_llama, leaky), reference, rtol=1e-6, atol=1e-5)


def test_packed_batch_needs_use_cache_false(tiny_llama):
    """transformers skips packed-sequence detection when a cache exists; use_cache defaults on."""
    docs = documents()
    packed = collate_packed(ROWS, docs, pad_id=0, row_len=20)
    inputs = packed.model_inputs()
    with torch.no_grad():
        right = tiny_llama(**inputs).logits
        inputs["use_cache"] = True
        cached = tiny_llama(**inputs).logits
    # Row 0's first document sees nothing before it either way; the second one leaks with a cache.
    assert torch.allclose(right[0, :5], cached[0, :5], atol=1e-6)
    assert not torch.allclose(right[0, 5:14], cached[0, 5:14], atol=1e-4)


def test_loss_masks_restrict_targets_in_padded_and_packed_batches():
    docs = [[1, 2, 3, 4], [5, 6, 7]]
    masks = [[0, 0, 1, 1], [0, 1, 1]]  # e.g. SFT: prompt tokens 0, completion tokens 1
    padded = collate_padded(docs, pad_id=0, loss_masks=masks)
    assert padded.labels.tolist() == [[-100, -100, 3, 4], [-100, 6, 7, -100]]
    assert padded.n_target == 4 == int((padded.labels[:, 1:] != IGNORE_INDEX).sum())
    packed = collate_packed([[(0, 0, 4), (1, 0, 3)]], docs, pad_id=0, row_len=8, loss_masks=masks)
    assert packed.labels.tolist() == [[-100, -100, 3, 4, -100, 6, 7]]
    assert packed.n_target == 4
    # a split document keeps the mask of its own positions
    split = collate_packed([[(0, 2, 4)]], docs, pad_id=0, row_len=8, loss_masks=masks)
    assert split.labels.tolist() == [[-100, 4]]


def test_masked_packed_loss_equals_masked_padded_loss(tiny_llama):
    docs = documents()
    g = torch.Generator().manual_seed(1)
    masks = [(torch.rand(len(d), generator=g) > 0.4).long().tolist() for d in docs]
    packed = collate_packed(ROWS, docs, pad_id=0, row_len=20, loss_masks=masks)
    pieces = [(docs[i][s:e], masks[i][s:e]) for row in ROWS for i, s, e in row]
    padded = collate_padded([p for p, _ in pieces], pad_id=0, loss_masks=[m for _, m in pieces])
    # a piece's first token never has a label in a packed row; in a padded row it is never a target either
    assert packed.n_target == padded.n_target < sum(len(d) for d in docs) - len(docs)
    torch.testing.assert_close(loss_sum(tiny_llama, packed), loss_sum(tiny_llama, padded), rtol=1e-6, atol=1e-5)
