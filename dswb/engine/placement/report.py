"""A plan in words: the per-device table, whether it fits, and by how much it does not.

Pure Python; the CLI prints `plan_rows` with its table helper, the engine logs `plan_text`.
Sizes are shown in binary units (`dswb.util.fmt.fmt_bytes`): a limit given as `80GB` (80 x 10^9
bytes) shows as `74.5 GiB`.
"""

from __future__ import annotations

from dataclasses import replace

from dswb.engine.placement.memory import KINDS
from dswb.engine.placement.planner import Plan, min_devices, plan_layers
from dswb.engine.placement.shapes import BLOCK, EMBED, HEAD, NORM, Unit
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
    """One row per device (the missing devices of the blog sketch's split included), then a total row."""
    rows = []
    flops = plan.total_flops or 1.0
    for d in plan.devices + plan.phantom:
        limit = d.device.free
        use = "-" if not limit else f"{d.total / limit:.0%}"
        if not d.exists:
            use = "missing"
        rows.append([d.device.name, d.unit_range()] + [fmt_bytes(getattr(d.bytes, k)) for k in KINDS]
                    + [fmt_bytes(d.total), "?" if limit is None else fmt_bytes(limit), use, f"{d.flops / flops:.1%}"])
    totals = {k: sum(getattr(d.bytes, k) for d in plan.devices + plan.phantom) for k in KINDS}
    free = plan.free_total
    count = len(plan.devices)
    rows.append(["total", f"{count} device{'s' if count != 1 else ''}"] + [fmt_bytes(totals[k]) for k in KINDS]
                + [fmt_bytes(plan.total_bytes), "?" if free is None else fmt_bytes(free),
                   "-" if not free else f"{plan.total_bytes / free:.0%}", "100%"])
    return rows


def model_line(plan: Plan) -> str:
    shape = plan.shape
    units = [u for d in plan.devices + plan.phantom for u in d.units]
    blocks = [u for u in units if u.kind == BLOCK]
    embed = sum(u.params for u in units if u.kind == EMBED)
    head = [u for u in units if u.kind == HEAD]
    head_text = "tied to the embedding" if head and head[0].tied_to else fmt_count(sum(u.params for u in head))
    return (f"model: {shape.source or shape.model_type}: {fmt_count(plan.params)} parameters "
            f"(embedding {fmt_count(embed)}, {len(blocks)} blocks x {fmt_count(blocks[0].params if blocks else 0)}, "
            f"head {head_text}); hidden {shape.hidden}, vocab {shape.vocab}")


def fit_lines(plan: Plan) -> list[str]:
    """Whether the plan fits and, when it does not, by how much and what would make it fit."""
    if plan.fits is None:
        unknown = sorted({d.device.name for d in plan.devices if d.device.limit is None})
        return [f"fits: not checked, the memory of {', '.join(unknown)} is unknown "
                f"(give parallel.max_memory or --memory); the plan needs {fmt_bytes(plan.total_bytes)}"]
    if plan.fits:
        busiest = max(plan.devices, key=lambda d: d.total / max(1, d.device.free or 1))
        return [f"fits: {fmt_bytes(plan.total_bytes)} on {len(plan.devices)} devices; the fullest, "
                f"{busiest.device.name}, is at {busiest.total / max(1, busiest.device.free or 1):.0%} of "
                f"{fmt_bytes(busiest.device.free or 0)}"]
    lines = [does_not_fit(plan)]
    over = [d for d in plan.devices if d.over]
    if over:
        lines.append("over: " + ", ".join(f"{d.device.name} by {fmt_bytes(d.over)}" for d in over))
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
    head = [model_line(plan), f"memory: {plan.memory.describe()}", f"plan: {plan.strategy}"]
    return "\n".join(head + table + fit_lines(plan))


def plan_dict(plan: Plan) -> dict:
    """The plan as JSON-ready data (`dswb plan --json`)."""
    flops = plan.total_flops or 1.0
    return {
        "model": {"source": plan.shape.source, "model_type": plan.shape.model_type, "params": plan.params,
                  "layers": plan.shape.layers, "hidden": plan.shape.hidden, "vocab": plan.shape.vocab},
        "memory": plan.memory.describe(), "strategy": plan.strategy, "fits": plan.fits,
        "total_bytes": plan.total_bytes, "free_bytes": plan.free_total, "load_ratio": plan.load_ratio(),
        "flops_ratio": plan.flops_ratio(), "split_points": plan.split_points(),
        "devices": [{"device": d.device.name, "exists": d.exists, "modules": d.unit_range(),
                     "units": [u.name for u in d.units], **d.bytes.as_dict(), "total": d.total,
                     "limit": d.device.free, "over": d.over, "flops_share": d.flops / flops}
                    for d in plan.devices + plan.phantom],
        "notes": fit_lines(plan),
    }
