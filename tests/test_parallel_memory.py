"""The planner's activation and compute-copy formulas against what autograd really saves.

Saved tensors are recorded with `torch.autograd.graph.saved_tensors_hooks` during a forward pass of
a real transformers Llama (sdpa attention) and attributed to the module that was running; the bf16
weight copies autocast makes are told apart from activations by being 2-D casts of Linear weights.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dswb.engine.placement.memory import (MemoryModel, block_activation_bytes_per_token, copy_bytes_per_param,
                                         unit_bytes)
from dswb.engine.placement.shapes import shape_from_hf_config, units

SHAPES = [dict(hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2),
          dict(hidden_size=128, intermediate_size=256, num_attention_heads=8, num_key_value_heads=8)]


def saved_bytes(model, ids, amp):
    """{module label: (activation bytes, weight-copy bytes)} saved for backward during one forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_shapes = {s for m in model.modules() if isinstance(m, torch.nn.Linear)
                     for s in (tuple(m.weight.shape), tuple(m.weight.shape)[::-1])}  # saved as W or W.t()
    current, seen = ["top"], {}
    labelled = [("embed", model.model.embed_tokens), ("norm", model.model.norm), ("head", model.lm_head)]
    labelled += [(f"block{i}", layer) for i, layer in enumerate(model.model.layers)]
    handles = []
    for label, module in labelled:
        handles.append(module.register_forward_pre_hook(lambda m, a, label=label: current.__setitem__(0, label)))
        handles.append(module.register_forward_hook(lambda m, a, o: current.__setitem__(0, "top")))

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            is_copy = t.dim() == 2 and t.dtype == torch.bfloat16 and tuple(t.shape) in weight_shapes
            seen[ptr] = (current[0], storage.nbytes(), is_copy)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    out: dict[str, list[int]] = {}
    for label, nbytes, is_copy in seen.values():
        entry = out.setdefault(label, [0, 0])
        entry[1 if is_copy else 0] += nbytes
    return out


@pytest.mark.parametrize("dims", SHAPES, ids=["gqa", "mha"])
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_block_activation_formula_matches_saved_tensors(dims, amp):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, num_hidden_layers=2, max_position_embeddings=128,
                         attn_implementation="sdpa", **dims)
    model = LlamaForCausalLM(config).train()
    ids = torch.randint(0, 300, (4, 96))
    measured = saved_bytes(model, ids, amp)
    shape = shape_from_hf_config(config.to_dict())
    compute = "bf16" if amp else "fp32"
    tokens = ids.numel()
    # block 1: block 0 also saves the rotary cos/sin every block shares
    estimate = tokens * block_activation_bytes_per_token(shape, compute)
    assert measured["block1"][0] == pytest.approx(estimate, rel=0.05)
    block = units(shape)[1]
    assert measured["block1"][1] == block.matmul_params * copy_bytes_per_param(block, compute)
    mm = MemoryModel(compute=compute, tokens=tokens, seq_len=96)
    norm, head = units(shape)[-2], units(shape)[-1]
    assert measured["norm"][0] == pytest.approx(unit_bytes(norm, shape, mm).activations, rel=0.05)
    # the head saves its input; the logits, their copy and gradient are counted on top (not saved tensors)
    assert measured["head"][0] < unit_bytes(head, shape, mm).activations
