"""Layer mapping executed: training and generation through a mapping equal the unmapped model.

On a CPU-only machine every "device" is the CPU, where a missed boundary would go unnoticed. So the
boundaries are also checked with dtypes standing in for devices: the mapped model's blocks live in
float32 and float64 in turn, and the same hooks convert what crosses. A tensor that skipped a hook
would meet weights of the other dtype and fail; gradients must flow back through every conversion.
With CUDA present, a cpu/cuda mapping is run for real as well.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dswb.engine.placement.layer_map import TensorMover, layer_map_of, map_layers, model_units, shape_of, unmap_layers
from dswb.engine.placement.memory import MemoryModel
from dswb.engine.placement.planner import DeviceSpec, plan_layers
from dswb.engine.placement.roles import Placement, enable_activation_checkpointing
from dswb.engine.train.prepare import prepare_model
from dswb.errors import UserError
from helpers import tiny_config


class DtypeMover(TensorMover):
    """'Devices' are dtypes: floating tensors are converted, everything else passes unchanged."""

    def differs(self, tensor, dtype):
        return tensor.is_floating_point() and tensor.dtype != dtype

    def convert(self, tensor, dtype):
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    def location(self, tensor):
        return torch.float32


def tiny_llama(tie: bool = False, layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        tie_word_embeddings=tie, pad_token_id=0, attn_implementation="sdpa"))


def batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 61, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding: a real attention mask crosses the boundaries
    return ids, mask


def loss_and_grads(model, checkpointing: bool = False):
    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    ids, mask = batch()
    out = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.double() for n, p in model.named_parameters()}


def greedy(model):
    model.eval()
    ids, mask = batch()
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                              pad_token_id=0)


def floating(obj):
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in floating(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in floating(x)]
    return []


def check_boundaries(model, checked: list):
    """After the mapping's hooks: every floating input of a block, the norm and the head must already be in
    that module's dtype. Elementwise ops would promote a stray float32 silently, so check it here."""
    modules = list(model.model.layers) + [model.model.norm, model.lm_head]

    def check(module, args, kwargs):
        dtype = next(module.parameters()).dtype
        for tensor in floating((args, kwargs)):
            assert tensor.dtype == dtype, f"{type(module).__name__} got {tensor.dtype}, lives in {dtype}"
        checked.append(module)

    return [m.register_forward_pre_hook(check, with_kwargs=True) for m in modules]


def dtype_mapped(model, dtypes, checked: list | None = None):
    shape = shape_of(model)
    devices = [DeviceSpec(f"d{i}") for i in range(len(dtypes))]
    plan = plan_layers(shape, MemoryModel(tokens=36, seq_len=12), devices, model_units=model_units(model, shape))
    map_layers(model, plan, dtypes, mover=DtypeMover())
    check_boundaries(model, checked if checked is not None else [])
    return plan


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_training_through_dtype_boundaries_matches_the_unmapped_model(tie, checkpointing):
    reference = tiny_llama(tie)
    mapped = copy.deepcopy(reference)
    checked: list = []
    plan = dtype_mapped(mapped, [torch.float32, torch.float64, torch.float64], checked)
    assert plan.assignment()["model.norm"] == 2  # the final norm runs in float64, the logits come back float32
    assert mapped.model.layers[-1].mlp.up_proj.weight.dtype == torch.float64
    assert mapped.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    loss, grads = loss_and_grads(reference, checkpointing)
    mapped_loss, mapped_grads = loss_and_grads(mapped, checkpointing)
    assert len(checked) >= 6  # 4 blocks, norm, head (blocks again when recomputed)
    assert mapped(input_ids=batch()[0], use_cache=False).logits.dtype == torch.float32  # outputs come home
    assert mapped_loss == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == mapped_grads.keys()
    for name in grads:
        torch.testing.assert_close(mapped_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_generation_with_a_kv_cache_through_dtype_boundaries(tie):
    reference = tiny_llama(tie)
    mapped = copy.deepcopy(reference)
    dtype_mapped(mapped, [torch.float32, torch.float64, torch.float32])
    expected = greedy(reference)
    assert torch.equal(greedy(mapped), expected)


def test_removing_the_hooks_leaves_modules_where_they_are():
    model = tiny_llama()
    dtype_mapped(model, [torch.float32, torch.float64])
    ids, _ = batch()
    model(input_ids=ids)
    assert layer_map_of(model) is not None
    unmap_layers(model)
    assert layer_map_of(model) is None
    assert model.model.layers[-1].mlp.up_proj.weight.dtype == torch.float64
    with pytest.raises(AssertionError, match="got torch.float32, lives in torch.float64"):
        model(input_ids=ids)


def layers_config(devices: str, *extra: str):
    return tiny_config("run.device=cpu", "parallel.mode=layers", f"parallel.devices={devices}", *extra)


def test_prepare_model_in_layers_mode_trains_and_generates_like_no_mapping():
    reference = tiny_llama()
    mapped = copy.deepcopy(reference)
    config = layers_config('["cpu", "cpu", "cpu"]')
    mapped = prepare_model(mapped, config, torch.device("cpu"))
    plan = layer_map_of(mapped).plan
    assert len(plan.devices) == 3 and sum(len(d.units) for d in plan.devices) == 7  # embed, 4 blocks, norm, head
    assert plan.params == sum(p.numel() for p in reference.parameters())
    loss, grads = loss_and_grads(reference)
    mapped_loss, mapped_grads = loss_and_grads(mapped)
    assert mapped_loss == loss
    assert all(torch.equal(grads[n], mapped_grads[n]) for n in grads)
    assert torch.equal(greedy(mapped), greedy(reference))


def test_a_model_without_llama_style_modules_is_a_user_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(UserError, match="GPT2LMHeadModel is not a Llama-style model"):
        prepare_model(model, layers_config('["cpu", "cpu"]'), torch.device("cpu"))
    wrapper = torch.nn.ModuleDict({"policy": tiny_llama(), "value": tiny_llama()})
    with pytest.raises(UserError, match="ModuleDict is not a transformers model; place the models it holds one by one"):
        prepare_model(wrapper, layers_config('["cpu", "cpu"]'), torch.device("cpu"))


def test_mode_none_moves_the_whole_model_and_installs_nothing():
    model = prepare_model(tiny_llama(), tiny_config("run.device=cpu"), torch.device("cpu"))
    assert layer_map_of(model) is None


def test_activation_checkpointing_option_is_applied():
    model = prepare_model(tiny_llama(), tiny_config("parallel.activation_checkpointing=true"), torch.device("cpu"))
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_roles_share_devices_and_count_what_earlier_roles_hold():
    config = layers_config('["cpu", "cpu"]', 'parallel.reference_devices=["cpu"]', 'parallel.max_memory=["1GB"]')
    placement = Placement(config, torch.device("cpu"))
    policy = prepare_model(tiny_llama(), config, torch.device("cpu"), placement=placement)
    reference = prepare_model(tiny_llama(), config, torch.device("cpu"), role="reference", trainable=False,
                              placement=placement)
    policy_plan, reference_plan = placement.plans["policy"], placement.plans["reference"]
    assert len(policy_plan.devices) == 2 and len(reference_plan.devices) == 1
    assert reference_plan.devices[0].bytes.grads == 0 and reference_plan.devices[0].bytes.optimizer == 0
    assert policy_plan.devices[0].bytes.optimizer > 0
    held = policy_plan.devices[0].total + policy_plan.devices[1].total  # both entries are the one CPU
    assert reference_plan.devices[0].device.used == held
    assert placement.used["cpu"] == held + reference_plan.devices[0].total
    assert layer_map_of(policy) is not None and layer_map_of(reference) is not None


def test_a_mapping_that_does_not_fit_stops_with_one_line():
    config = layers_config('["cpu", "cpu"]', 'parallel.max_memory=["100KB"]')
    with pytest.raises(UserError, match=r"parallel: the policy model does not fit: needs .*\(short by"):
        prepare_model(tiny_llama(), config, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for a real cross-device mapping")
def test_real_devices_cuda_and_cpu_train_and_generate_like_one_device():
    reference = tiny_llama()
    mapped = copy.deepcopy(reference)
    shape = shape_of(mapped)
    devices = [torch.device("cuda:0"), torch.device("cpu"), torch.device("cuda:0")]
    plan = plan_layers(shape, MemoryModel(tokens=36, seq_len=12), [DeviceSpec(str(d)) for d in devices],
                       model_units=model_units(mapped, shape))
    map_layers(mapped, plan, devices)
    assert {p.device.type for p in mapped.parameters()} == {"cuda", "cpu"}
    ids, mask = batch()
    loss, grads = loss_and_grads(reference)
    mapped.train()
    out = mapped(input_ids=ids.cuda(), attention_mask=mask.cuda(), labels=ids.cuda(), use_cache=False)
    assert out.logits.device.type == "cuda"
    out.loss.backward()
    assert out.loss.item() == pytest.approx(loss, rel=1e-4)
    for name, p in mapped.named_parameters():
        torch.testing.assert_close(p.grad.cpu().double(), grads[name], rtol=1e-3, atol=1e-5, msg=name)
    mapped.eval()
    with torch.no_grad():
        generated = mapped.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=6,
                                    do_sample=False, pad_token_id=0)
    assert torch.equal(generated.cpu(), greedy(reference))


def test_without_layers_mode_a_role_goes_whole_to_its_own_device():
    from dswb.config import load_config
    from dswb.engine.placement.roles import Placement

    config = load_config(None, ['parallel.reference_devices=["cpu"]'])
    placement = Placement(config, torch.device("cpu"))
    model = torch.nn.Linear(2, 2).to(torch.float64)
    assert placement.place(model, role="reference", trainable=False) is model
    gpu = load_config(None, ['parallel.reward_devices=["cuda:1"]'])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            Placement(gpu, torch.device("cpu")).place(torch.nn.Linear(2, 2), role="reward", trainable=False)
