"""A plan in words: the per-device table, whether it fits, and by how much it does not.

Pure Python; the CLI prints `plan_rows` with its table helper, the engine logs `plan_text`.
Sizes are shown in binary units (`dswb.util.fmt.fmt_bytes`): a limit given as `80GB` (80 x 10^9
bytes) shows as `74.5 GiB`. A model that trains LoRA adapters gets a `lora_line` (rank, trainable
parameters, the frozen base's dtype and size: bf16 when the run computes in bf16, fp32 otherwise, its
projections in NF4 or int8 for QLoRA); the stage's other models (`Plan.roles`) are rows of their own
above the trained model's. A Mixture-of-Experts model's `model_line` gives its total and active parameters
(what a token runs: top_k of the routed experts), and its `moe_line` the memory all its experts take.
"""

from __future__ import annotations

from dataclasses import replace

from dswb.engine.placement.memory import KINDS, MemoryModel, adapter_params, base_bytes, base_dtype, frozen_weight_bytes
from dswb.engine.placement.planner import DevicePlan, Plan, min_devices, plan_layers, plan_stage
from dswb.engine.placement.shapes import BLOCK, EMBED, HEAD, NORM, ModelShape, Unit
from dswb.engine.placement.shapes import units as shape_units
from dswb.util.fmt import fmt_bytes

HEADERS = ["device", "modules", "weights", "grads", "optimizer", "copies", "activations", "total", "limit",
           "use", "FLOPs"]
NUMERIC = tuple(range(2, len(HEADERS)))


def fmt_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return str(int(n))


def plan_rows(plan: Plan) -> list[list[str]]:
    """One row per role (placed first), per device (the missing devices of the blog sketch's split
    included), then a total row."""
    rows = []
    flops = plan.total_flops or 1.0
    for d in plan.roles + plan.devices + plan.phantom:
        limit = _free_before(plan, d)
        use = "-" if not limit else f"{d.total / limit:.0%}"
        if not d.exists:
            use = "missing"
        rows.append([d.device.name, d.label or d.unit_range()] + [fmt_bytes(getattr(d.bytes, k)) for k in KINDS]
                    + [fmt_bytes(d.total), "?" if limit is None else fmt_bytes(limit), use, f"{d.flops / flops:.1%}"])
    totals = {k: sum(getattr(d.bytes, k) for d in plan.roles + plan.devices + plan.phantom) for k in KINDS}
    free = plan.free_total
    count = len(plan.devices)
    rows.append(["total", f"{count} device{'s' if count != 1 else ''}"] + [fmt_bytes(totals[k]) for k in KINDS]
                + [fmt_bytes(plan.total_bytes), "?" if free is None else fmt_bytes(free),
                   "-" if not free else f"{plan.total_bytes / free:.0%}", "100%"])
    return rows


def model_line(plan: Plan) -> str:
    """The model's parameters by module; an MoE model's total (every expert) and active per token."""
    shape = plan.shape
    units = [u for d in plan.devices + plan.phantom for u in d.units]
    blocks = [u for u in units if u.kind == BLOCK]
    embed = sum(u.params for u in units if u.kind == EMBED)
    head = [u for u in units if u.kind == HEAD]
    head_text = "tied to the embedding" if head and head[0].tied_to else fmt_count(sum(u.params for u in head))
    if shape.moe is None:
        block = fmt_count(blocks[0].params if blocks else 0)
        return (f"model: {shape.source or shape.model_type}: {fmt_count(plan.params)} parameters "
                f"(embedding {fmt_count(embed)}, {len(blocks)} blocks x {block}, "
                f"head {head_text}); hidden {shape.hidden}, vocab {shape.vocab}")
    kinds = []
    for label, group in (("dense", [u for u in blocks if not u.routed_params]),
                         ("MoE", [u for u in blocks if u.routed_params])):
        if group:
            kinds.append(f"{len(group)} {label} block{'s' if len(group) != 1 else ''} x {fmt_count(group[0].params)}")
    return (f"model: {shape.source or shape.model_type}: params {fmt_count(plan.params)} total, "
            f"{fmt_count(plan.active_params)} active per token ({shape.moe.describe()}); embedding "
            f"{fmt_count(embed)}, {', '.join(kinds)}, head {head_text}; hidden {shape.hidden}, vocab {shape.vocab}")


def expert_bytes_per_param(mm: MemoryModel) -> tuple[int, str]:
    """Bytes a routed expert's parameter takes (without compute copies) and what they are."""
    if mm.lora_r:
        return base_bytes(mm), f"frozen {base_dtype(mm)} weights (LoRA does not adapt 3-D experts)"
    if mm.trainable:
        return (mm.weight_bytes + mm.grad_bytes + mm.optimizer_states * mm.state_bytes,
                "weights, grads and optimizer state, since every expert trains")
    return mm.weight_bytes, "frozen weights"


def moe_dict(plan: Plan) -> dict:
    """The routed experts of an MoE `plan` in numbers (`moe_line`)."""
    moe = plan.shape.moe
    model_units = [u for d in plan.devices + plan.phantom for u in d.units]
    routed = sum(u.routed_params for u in model_units)
    return {"experts": moe.experts, "top_k": moe.top_k, "shared": moe.shared, "layers": list(moe.layers),
            "routed_params": routed, "active_params": plan.active_params,
            "expert_bytes": routed * expert_bytes_per_param(plan.memory)[0]}


def moe_line(plan: Plan) -> str:
    """One line on an MoE model's experts: how many, and the memory all of them take (they all train)."""
    data, moe = moe_dict(plan), plan.shape.moe
    _, what = expert_bytes_per_param(plan.memory)
    shared = f" and {moe.shared} shared" if moe.shared else ""
    return (f"moe: {len(moe.layers)} MoE blocks, each with {moe.experts} routed experts (a token runs {moe.top_k})"
            f"{shared}: the routed experts hold {fmt_count(data['routed_params'])} of the {fmt_count(plan.params)} "
            f"parameters and {fmt_bytes(data['expert_bytes'])} of {what}; FLOPs count the "
            f"{fmt_count(plan.active_params)} parameters a token runs")


def trainable_params(shape: ModelShape, mm: MemoryModel, model_units: list[Unit]) -> int:
    """Parameters that train under adapters: the adapters and the modules trained in full beside them."""
    return sum(adapter_params(u, shape, mm.lora_targets, mm.lora_r) + (u.params if u.name in mm.full_modules else 0)
               for u in model_units)


def base_precision(mm: MemoryModel) -> str:
    """How the frozen base of a model that trains adapters is held: in the run's compute dtype (bf16 or
    fp32, `memory.base_dtype`), its blocks' projections in NF4 or int8 for QLoRA."""
    dtype = base_dtype(mm)
    if mm.quantize == "nf4":
        return f"NF4 (4.127 bits a weight), embedding, norms and head in {dtype}"
    if mm.quantize == "int8":
        return f"int8 (a byte a weight, a scale a row), embedding, norms and head in {dtype}"
    return dtype


def lora_line(plan: Plan) -> str:
    """One line on the adapters: rank, how many modules, trainable parameters (of all, as peft counts
    them: base, adapters and the trained copies), and the frozen base's precision and bytes."""
    shape, mm = plan.shape, plan.memory
    model_units = [u for d in plan.devices + plan.phantom for u in d.units]
    trainable = trainable_params(shape, mm, model_units)
    every = plan.params + trainable
    line = (f"lora: adapters r={mm.lora_r} on {len(mm.lora_targets)} modules: {trainable:,} trainable parameters "
            f"({fmt_count(trainable)}, {trainable / every:.2%} of {fmt_count(every)}); frozen base in "
            f"{base_precision(mm)}: "
            f"{fmt_bytes(sum(frozen_weight_bytes(u, shape, mm) for u in model_units))}")
    for role in plan.role_models:
        if role.memory.trainable and role.memory.lora_r:
            value = trainable_params(role.shape, role.memory, shape_units(role.shape))
            line += f"; {role.name}: its own adapter, {value:,} trainable"
        elif role.memory.trainable:
            line += f"; {role.name}: trained in full"
    return line


def _free_before(plan: Plan, d: DevicePlan) -> int | None:
    """The free memory of `d`'s device before the stage's models were placed: what its row is measured by."""
    roles = [r for r in plan.roles if r.device.name == d.device.name]
    return roles[0].device.free if roles else d.device.free


def _device_use(plan: Plan, d: DevicePlan) -> tuple[int, int]:
    """(bytes, free bytes) of the trained model's device plan `d`, with the roles placed before it there."""
    roles = sum(r.total for r in plan.roles if r.device.name == d.device.name)
    return d.total + roles, _free_before(plan, d) or 0


def _device_over(plan: Plan, d: DevicePlan) -> int:
    """Bytes past the free memory of `d`'s device, the roles placed before it included."""
    if not any(r.device.name == d.device.name for r in plan.roles):
        return d.over
    used, free = _device_use(plan, d)
    return max(0, used - free)


def fit_lines(plan: Plan) -> list[str]:
    """Whether the plan fits and, when it does not, by how much and what would make it fit."""
    if plan.fits is None:
        unknown = sorted({d.device.name for d in plan.devices if d.device.limit is None})
        return [f"fits: not checked, the memory of {', '.join(unknown)} is unknown "
                f"(give parallel.max_memory or --memory); the plan needs {fmt_bytes(plan.total_bytes)}"]
    if plan.fits:
        loads = [(d, *_device_use(plan, d)) for d in plan.devices]
        busiest, used, free = max(loads, key=lambda t: t[1] / max(1, t[2] or 1))
        return [f"fits: {fmt_bytes(plan.total_bytes)} on {len(plan.devices)} devices; the fullest, "
                f"{busiest.device.name}, is at {used / max(1, free or 1):.0%} of {fmt_bytes(free)}"]
    lines = [does_not_fit(plan)]
    over = [(d, _device_over(plan, d)) for d in plan.devices if _device_over(plan, d)]
    if over:
        lines.append("over: " + ", ".join(f"{d.device.name} by {fmt_bytes(n)}" for d, n in over))
    if plan.phantom:
        names = ", ".join(f"{d.unit_range()} on {d.device.name}" for d in plan.phantom)
        lines.append(f"the even split puts {names}: a device that does not exist")
    lines += _suggestions(plan)
    return lines


def does_not_fit(plan: Plan) -> str:
    """One line: needed vs available and the shortfall (or why an in-order split cannot fit)."""
    free = plan.free_total or 0
    need = plan.total_bytes
    if need > free:
        return (f"does not fit: needs {fmt_bytes(need)}, the {len(plan.devices)} devices offer {fmt_bytes(free)} "
                f"(short by {fmt_bytes(need - free)})")
    biggest = max((d for d in plan.devices), key=lambda d: d.over)
    return (f"does not fit: {fmt_bytes(need)} would fit in {fmt_bytes(free)} in total, but no in-order split "
            f"without cutting a decoder block does ({biggest.device.name} over by {fmt_bytes(biggest.over)})")


def _suggestions(plan: Plan) -> list[str]:
    if plan.memory.lora_r:
        return _adapter_suggestions(plan)
    lines = []
    limits = {d.device.free for d in plan.devices}
    if len(limits) == 1 and not plan.phantom:
        (limit,) = limits
        count = min_devices(plan.shape, plan.memory, limit or 0, _in_model_order(plan))
        if count is None:
            lines.append(f"one module alone needs more than {fmt_bytes(limit or 0)}: "
                         f"no number of such devices holds it")
        else:
            lines.append(f"it fits on {count} devices of {fmt_bytes(limit or 0)}")
    mm = plan.memory
    options = []
    if mm.trainable and not mm.activation_checkpointing:
        options.append(("activation checkpointing", {"activation_checkpointing": True}))
    if mm.trainable and mm.state_bytes > 2:
        options.append(("bf16 AdamW moments", {"state_bytes": 2}))
    if len(options) == 2:
        options.append(("both", {**options[0][1], **options[1][1]}))
    if options:
        specs = [d.device for d in plan.devices]
        units = _in_model_order(plan)
        needs = []
        for label, change in options:
            alt = plan_layers(plan.shape, replace(mm, **change), specs, model_units=units)
            needs.append(f"{label} {fmt_bytes(alt.total_bytes)}" + (" (fits)" if alt.fits else ""))
        lines.append("it would need, with " + "; with ".join(needs))
    return lines


def _adapter_suggestions(plan: Plan) -> list[str]:
    """What a LoRA stage needs with activation checkpointing or an NF4 base, and the largest micro-batch
    that fits (more devices do not help: DDP gives each one the whole model)."""
    mm = plan.memory
    options: list[tuple[str, dict]] = []
    if not mm.activation_checkpointing:
        options.append(("activation checkpointing", {"activation_checkpointing": True}))
    if mm.quantize == "none":
        options.append(("lora.quantize = 'nf4'", {"quantize": "nf4"}))
    if len(options) == 2:
        options.append(("both", {**options[0][1], **options[1][1]}))
    lines = []
    if options:
        needs = []
        for label, change in options:
            alt = _replan(plan, change)
            needs.append(f"{label} {fmt_bytes(alt.total_bytes)}" + (" (fits)" if alt.fits else ""))
        lines.append("it would need, with " + "; with ".join(needs))
    tokens = max_fitting_tokens(plan)
    if tokens:
        lines.append(f"it fits with at most {tokens:,} tokens per micro-batch (batching.max_tokens)")
    return lines


def _replan(plan: Plan, change: dict) -> Plan:
    """`plan` again with `change` to its memory model, and to its roles' where it applies (checkpointing
    to trained models, a quantized base to models with adapters; `tokens` to all)."""
    def applies(key: str, mm: MemoryModel) -> bool:
        if key == "quantize":
            return mm.lora_r > 0
        return mm.trainable if key == "activation_checkpointing" else True

    def changed(mm: MemoryModel) -> MemoryModel:
        return replace(mm, **{k: v for k, v in change.items() if applies(k, mm)})

    roles = [replace(r, memory=changed(r.memory)) for r in plan.role_models]
    specs = [(plan.roles or plan.devices)[0].device] + [d.device for d in plan.devices[1:]]
    return plan_stage(plan.shape, changed(plan.memory), specs, roles)


def max_fitting_tokens(plan: Plan) -> int:
    """The most tokens per micro-batch (below the plan's) with which the stage fits; 0 when none does."""
    low, high = 0, plan.memory.tokens
    while low < high:
        mid = (low + high + 1) // 2
        if _replan(plan, {"tokens": mid}).fits:
            low = mid
        else:
            high = mid - 1
    return low


def _in_model_order(plan: Plan) -> list[Unit]:
    """The plan's units as the model orders them (a tied head is placed with the embedding)."""
    rank = {EMBED: 0, BLOCK: 1, NORM: 2, HEAD: 3}
    return sorted((u for d in plan.devices for u in d.units), key=lambda u: (rank[u.kind], u.layer))


def plan_text(plan: Plan) -> str:
    """The plan as plain text: model, memory model, a fixed-width table and the fit lines."""
    rows = [HEADERS] + plan_rows(plan)
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(HEADERS))]
    table = []
    for r in rows:
        cells = [str(v).rjust(w) if c in NUMERIC else str(v).ljust(w) for c, (v, w) in enumerate(zip(r, widths))]
        table.append("  ".join(cells).rstrip())
    head = [model_line(plan)] + ([moe_line(plan)] if plan.shape.moe else [])
    head += [lora_line(plan)] if plan.memory.lora_r else []
    head += [f"memory: {plan.memory.describe()}", f"plan: {plan.strategy}"]
    return "\n".join(head + table + fit_lines(plan))


def plan_dict(plan: Plan) -> dict:
    """The plan as JSON-ready data (`dswb plan --json`)."""
    flops = plan.total_flops or 1.0
    data = {
        "model": {"source": plan.shape.source, "model_type": plan.shape.model_type, "params": plan.params,
                  "active_params": plan.active_params, "layers": plan.shape.layers, "hidden": plan.shape.hidden,
                  "vocab": plan.shape.vocab},
        "memory": plan.memory.describe(), "strategy": plan.strategy, "fits": plan.fits,
        "total_bytes": plan.total_bytes, "free_bytes": plan.free_total, "load_ratio": plan.load_ratio(),
        "flops_ratio": plan.flops_ratio(), "split_points": plan.split_points(),
        "devices": [{"device": d.device.name, "exists": d.exists, "modules": d.unit_range(),
                     "units": [u.name for u in d.units], **d.bytes.as_dict(), "total": d.total,
                     "limit": d.device.free, "over": d.over, "flops_share": d.flops / flops}
                    for d in plan.devices + plan.phantom],
        "notes": fit_lines(plan),
    }
    if plan.shape.moe:
        data["moe"] = moe_dict(plan)
    if plan.memory.lora_r:
        data["lora"] = lora_dict(plan)
    if plan.roles:
        data["roles"] = [{"role": r.name, "device": d.device.name, "modules": d.label, **d.bytes.as_dict(),
                          "total": d.total, "flops_share": d.flops / flops}
                         for r, d in zip(plan.role_models, plan.roles, strict=True)]
    return data


def lora_dict(plan: Plan) -> dict:
    """The adapters of `plan` as JSON-ready data (`lora_line` in numbers)."""
    shape, mm = plan.shape, plan.memory
    model_units = [u for d in plan.devices + plan.phantom for u in d.units]
    return {"r": mm.lora_r, "modules": len(mm.lora_targets), "dropout": mm.lora_dropout, "quantize": mm.quantize,
            "base_dtype": base_dtype(mm),
            "trainable_params": trainable_params(shape, mm, model_units),
            "base_weight_bytes": sum(frozen_weight_bytes(u, shape, mm) for u in model_units)}
