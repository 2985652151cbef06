"""The layer planner: every module placed once and in order, blocks never split, loads balanced,
limits respected, and a plain answer when the model does not fit. Pure arithmetic (no torch)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dswb.engine.placement.memory import MemoryModel, device_peak_bytes, unit_bytes
from dswb.engine.placement.planner import DeviceSpec, min_devices, plan_layers, blog_even_split
from dswb.engine.placement.report import does_not_fit, fit_lines, plan_dict, plan_rows, plan_text
from dswb.engine.placement.shapes import BLOCK, ModelShape, units
from dswb.errors import UserError

GB = 10**9
LLAMA_8B = ModelShape("llama", 4096, 14336, 32, 32, 8, 128, 128256, source="llama-3-8b")
LLAMA_70B = ModelShape("llama", 8192, 28672, 80, 64, 8, 128, 128256, source="llama-3-70b")
TRAIN = MemoryModel(compute="bf16", tokens=8192, seq_len=4096, activation_checkpointing=True)


def gpus(n: int, gb: float | None = 80) -> list[DeviceSpec]:
    return [DeviceSpec(f"cuda:{i}", None if gb is None else int(gb * GB)) for i in range(n)]


def check_placement(plan, shape) -> None:
    """Every unit exactly once, in model order (a tied head with the embedding), devices in order."""
    expected = units(shape)
    chain = [u.name for d in plan.devices for u in d.units if not u.tied_to]
    assert chain == [u.name for u in expected if not u.tied_to]
    assert sorted(u.name for d in plan.devices for u in d.units) == sorted(u.name for u in expected)
    assert all(d.units for d in plan.devices)
    if shape.tie_embeddings:
        assert plan.assignment()["lm_head"] == plan.assignment()["model.embed_tokens"] == 0
    assert plan.params == sum(u.params for u in expected)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8])
def test_70b_every_module_once_in_order_with_remainder_layers(n):
    plan = plan_layers(LLAMA_70B, TRAIN, gpus(n, None))
    check_placement(plan, LLAMA_70B)
    blocks = [sum(u.kind == BLOCK for u in d.units) for d in plan.devices]
    assert sum(blocks) == 80 and max(blocks) - min(blocks) <= 3
    assert plan.split_points() == [d.units[0].name for d in plan.devices[1:]]


def test_embedding_and_head_are_counted_where_they_are_placed():
    plan = plan_layers(LLAMA_8B, TRAIN, gpus(4))
    first, last = plan.devices[0], plan.devices[-1]
    embed = next(u for u in first.units if u.name == "model.embed_tokens")
    head = next(u for u in last.units if u.name == "lm_head")
    assert embed.params == head.params == 128256 * 4096
    assert first.bytes.weights == sum(u.params for u in first.units) * 4
    assert last.bytes.optimizer == sum(u.params for u in last.units) * 2 * 4
    # the head's logits (and their fp32 copy, log-softmax and gradient) land on the last device
    assert last.bytes.activations > plan.devices[1].bytes.activations


def test_max_load_within_ten_percent_of_ideal_for_uniform_blocks():
    shape = ModelShape("llama", 1024, 2816, 48, 16, 16, 64, 1000)  # small embedding and head: near-uniform units
    for n in (2, 3, 4, 6, 8):
        plan = plan_layers(shape, TRAIN, gpus(n))
        assert plan.fits
        assert plan.load_ratio() <= 1.10, (n, plan.load_ratio())
        assert plan.flops_ratio() <= 1.10, (n, plan.flops_ratio())


def test_the_blog_split_overruns_on_remainder_layers_and_the_planner_does_not():
    seed = blog_even_split(LLAMA_70B, TRAIN, gpus(6, 2000))
    assert [u.layer for d in seed.phantom for u in d.units] == [78, 79]  # 80 // 6 = 13 per device
    assert seed.fits is False and "does not exist" in " ".join(fit_lines(seed))
    planned = plan_layers(LLAMA_70B, TRAIN, gpus(6, 2000))
    assert planned.fits and not planned.phantom
    assert planned.load_ratio() < seed.load_ratio()


def test_heterogeneous_limits_get_proportional_shares():
    devices = [DeviceSpec("cuda:0", 40 * GB), DeviceSpec("cuda:1", 80 * GB), DeviceSpec("cuda:2", 80 * GB)]
    plan = plan_layers(LLAMA_8B, TRAIN, devices)
    assert plan.fits
    use = [d.total / d.device.limit for d in plan.devices]
    assert max(use) - min(use) < 0.15, use
    assert plan.devices[0].total < plan.devices[1].total


def test_memory_already_used_by_another_role_is_respected():
    free = plan_layers(LLAMA_8B, TRAIN, gpus(2, 100))
    busy = plan_layers(LLAMA_8B, TRAIN, [DeviceSpec("cuda:0", 100 * GB, used=30 * GB), DeviceSpec("cuda:1", 100 * GB)])
    assert busy.fits and free.fits
    assert busy.devices[0].total < free.devices[0].total
    assert busy.devices[0].total <= 70 * GB


def test_compute_balance_evens_flops_within_the_limits():
    by_memory = plan_layers(LLAMA_8B, TRAIN, gpus(4))
    by_compute = plan_layers(LLAMA_8B, TRAIN, gpus(4), balance="compute")
    assert by_compute.fits
    assert by_compute.flops_ratio() <= by_memory.flops_ratio()


def test_does_not_fit_says_by_how_much_and_what_would_fit():
    plan = plan_layers(LLAMA_70B, TRAIN, gpus(8))
    assert plan.fits is False
    need, free = plan.total_bytes, 8 * 80 * GB
    line = does_not_fit(plan)
    assert line.startswith("does not fit: needs 1.2 TiB, the 8 devices offer 596.0 GiB")  # binary units
    assert f"short by {(need - free) / 2**30:.1f} GiB" in line
    text = "\n".join(fit_lines(plan))
    count = min_devices(LLAMA_70B, TRAIN, 80 * GB)
    assert f"it fits on {count} devices of 74.5 GiB" in text  # 80 x 10^9 bytes
    assert "with bf16 AdamW moments" in text
    over = {d.device.name: d.over for d in plan.devices}
    assert all(v > 0 for v in over.values())
    assert plan.strategy.startswith("least overloaded")


def test_min_devices_is_the_fewest_that_fit():
    count = min_devices(LLAMA_70B, TRAIN, 80 * GB)
    assert plan_layers(LLAMA_70B, TRAIN, gpus(count)).fits
    assert not plan_layers(LLAMA_70B, TRAIN, gpus(count - 1)).fits
    assert min_devices(LLAMA_70B, TRAIN, 5 * GB) is None  # one block alone is bigger


def test_fit_with_unknown_limits_is_not_claimed():
    plan = plan_layers(LLAMA_8B, TRAIN, gpus(2, None))
    assert plan.fits is None and "not checked" in fit_lines(plan)[0]


def test_more_devices_than_layers_is_a_user_error():
    shape = replace(LLAMA_8B, layers=4)
    with pytest.raises(UserError, match="5 devices but the model has only 4 decoder blocks"):
        plan_layers(shape, TRAIN, gpus(5))


def test_memory_kinds_follow_the_memory_model():
    block = units(LLAMA_8B)[1]
    base = unit_bytes(block, LLAMA_8B, replace(TRAIN, activation_checkpointing=False))
    assert base.weights == base.grads == block.params * 4 and base.optimizer == block.params * 8
    assert base.copies == block.matmul_params * 2
    assert unit_bytes(block, LLAMA_8B, replace(TRAIN, state_bytes=2)).optimizer == block.params * 4
    assert unit_bytes(block, LLAMA_8B, replace(TRAIN, compute="fp8")).copies == block.matmul_params
    assert unit_bytes(block, LLAMA_8B, replace(TRAIN, compute="fp32")).copies == 0
    ckpt = unit_bytes(block, LLAMA_8B, TRAIN)
    assert ckpt.activations == 8192 * 4 * 4096 < base.activations
    assert device_peak_bytes(LLAMA_8B, TRAIN) == base.activations  # one block recomputed at a time
    frozen = unit_bytes(block, LLAMA_8B, MemoryModel(trainable=False, weight_bytes=2))
    assert (frozen.weights, frozen.grads, frozen.optimizer) == (block.params * 2, 0, 0)


def test_report_rows_and_json_agree_with_the_plan():
    plan = plan_layers(LLAMA_8B, TRAIN, gpus(4))
    rows = plan_rows(plan)
    assert len(rows) == 5 and rows[-1][0] == "total"
    assert rows[0][1].startswith("embed, layers 0-") and rows[-2][1].endswith("norm, head")
    data = plan_dict(plan)
    assert sum(d["total"] for d in data["devices"]) == data["total_bytes"] == plan.total_bytes
    assert data["fits"] is True and "fits:" in plan_text(plan)


@settings(max_examples=60, deadline=None)
@given(layers=st.integers(1, 40), hidden=st.sampled_from([64, 256, 1024]), vocab=st.integers(10, 200_000),
       tie=st.booleans(), n=st.integers(1, 12), gb=st.sampled_from([None, 1, 20, 80]),
       balance=st.sampled_from(["memory", "compute"]), ckpt=st.booleans())
def test_property_random_shapes_and_devices(layers, hidden, vocab, tie, n, gb, balance, ckpt):
    shape = ModelShape("llama", hidden, hidden * 3, layers, 4, 2, hidden // 4, vocab, tie_embeddings=tie)
    mm = MemoryModel(compute="bf16", tokens=2048, seq_len=1024, activation_checkpointing=ckpt)
    if n > layers:
        with pytest.raises(UserError):
            plan_layers(shape, mm, gpus(n, gb), balance)
        return
    plan = plan_layers(shape, mm, gpus(n, gb), balance)
    check_placement(plan, shape)
    assert len(plan.devices) == n
    if plan.fits:
        assert all(d.total <= d.device.limit for d in plan.devices)
    biggest = max(u.total for u in [unit_bytes(u, shape, mm) for u in units(shape)]) + device_peak_bytes(shape, mm)
    if tie:
        biggest += unit_bytes(units(shape)[-1], shape, mm).total
    if balance == "memory" and plan.fits is not False:
        # no worse than the accelerate-style bound: fair share plus one module
        assert max(d.total for d in plan.devices) <= plan.total_bytes / n + biggest
    if gb is not None and plan.fits is False and plan.total_bytes <= n * gb * GB:
        assert "no in-order split" in does_not_fit(plan)
