"""The layer planner: place a model's modules on devices in order, never splitting a decoder block.

Input: the units of a model (`shapes.units`, or the counted modules of a live model), a memory
model (`memory.MemoryModel`) and devices with their limits. Output: a `Plan`, one contiguous range
of units per device, in device order (the forward pass visits the devices once, left to right).

The split is exact, not greedy: a dynamic program over (device, last unit) first minimizes the
bottleneck — the largest `bytes / limit` of any device (balance = "memory"; devices with unknown limits
count as equal) or the largest FLOPs of any device (balance = "compute") — among the splits that fit
every device's limit, then, among the splits with that bottleneck, the sum of squares, so the other
devices are as even as possible too. When no split fits, the plan is the one with the lowest peak
utilisation, and it says which devices overflow and by how much.

A head tied to the embedding (`tie_word_embeddings`) shares its weight, so it is placed with the
embedding. `blog_even_split` reproduces the blog's sketch's `i // (layers // gpus)` mapping, as a
baseline only: it ignores everything but the blocks and overruns past the last device on remainders.

`plan_stage` places a stage's other models (`memory.Role`: a LoRA stage's reference and PPO's value
model) on the first device before the trained model; their rows are the plan's `roles` and their bytes
count against that device's limit.

Pure Python; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dswb.engine.placement.memory import Bytes, MemoryModel, Role, device_peak_bytes, unit_bytes, unit_flops
from dswb.engine.placement.shapes import BLOCK, EMBED, NORM, ModelShape, Unit, inactive_params
from dswb.engine.placement.shapes import units as shape_units
from dswb.errors import UserError

BALANCE = ("memory", "compute")
INF = float("inf")


@dataclass(frozen=True)
class DeviceSpec:
    """A device as the planner sees it."""

    name: str                   # "cuda:0", "cpu", ...; several entries may share a torch device
    limit: int | None = None    # bytes the plan may use; None: unknown, not checked
    used: int = 0               # bytes already taken by models placed before (roles)

    @property
    def free(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


@dataclass
class DevicePlan:
    device: DeviceSpec
    units: list[Unit]
    bytes: Bytes
    flops: float
    exists: bool = True
    label: str = ""             # a role's row: what the modules column says instead of the unit range

    @property
    def total(self) -> int:
        return self.bytes.total

    @property
    def over(self) -> int:
        """Bytes past the device's free memory (0 when it fits or the limit is unknown)."""
        if not self.exists:
            return self.total
        free = self.device.free
        return 0 if free is None else max(0, self.total - free)

    def unit_range(self) -> str:
        """`embed, layers 0-8`, `layers 9-17`, `layers 72-79, norm, head`."""
        parts: list[str] = []
        blocks = [u.layer for u in self.units if u.kind == BLOCK]
        for unit in self.units:
            if unit.kind == BLOCK:
                if unit.layer == blocks[0]:
                    parts.append(f"layer {blocks[0]}" if len(blocks) == 1 else f"layers {blocks[0]}-{blocks[-1]}")
            else:
                parts.append({EMBED: "embed", NORM: "norm"}.get(unit.kind, "head (tied)" if unit.tied_to else "head"))
        return ", ".join(parts) or "-"


@dataclass
class Plan:
    shape: ModelShape
    memory: MemoryModel
    devices: list[DevicePlan]
    strategy: str
    phantom: list[DevicePlan] = field(default_factory=list)  # the blog sketch's units on missing devices
    roles: list[DevicePlan] = field(default_factory=list)    # the stage's other models, placed first
    role_models: list[Role] = field(default_factory=list)    # what `roles` were planned from

    @property
    def model_bytes(self) -> int:
        """Bytes of the trained model alone."""
        return sum(d.total for d in self.devices + self.phantom)

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + sum(d.total for d in self.roles)

    @property
    def total_flops(self) -> float:
        return sum(d.flops for d in self.devices + self.phantom + self.roles)

    @property
    def params(self) -> int:
        return sum(u.params for d in self.devices + self.phantom for u in d.units)

    @property
    def active_params(self) -> int:
        """Parameters a token runs: an MoE model's routed experts count top_k of them."""
        return self.params - sum(inactive_params(u, self.shape) for d in self.devices + self.phantom for u in d.units)

    def assignment(self) -> dict[str, int]:
        """Unit name -> device index (position in the device list)."""
        return {u.name: j for j, d in enumerate(self.devices) for u in d.units}

    @property
    def limits_known(self) -> bool:
        return all(d.device.limit is not None for d in self.devices)

    @property
    def fits(self) -> bool | None:
        """True: every device within its limit; False: some device over (or a missing device);
        None: nothing over, but some limit is unknown."""
        if self.phantom or any(d.over for d in self.devices + self.roles):
            return False
        return True if self.limits_known else None

    @property
    def free_total(self) -> int | None:
        """Free bytes of the devices before this plan's models (roles included) were placed."""
        if not self.limits_known:
            return None
        if not self.roles:
            return sum(d.device.free for d in self.devices)  # type: ignore[misc]
        first: dict[str, int] = {}
        for d in self.roles + self.devices:
            first.setdefault(d.device.name, d.device.free or 0)
        return sum(first.values())

    def ideal_share(self, j: int) -> float:
        """Device j's fair share of the trained model's bytes: in proportion to its free memory, else equal."""
        weights = _weights([d.device for d in self.devices])
        return self.model_bytes * weights[j] / sum(weights)

    def load_ratio(self) -> float:
        """Max device load / ideal (1.0 = perfectly even; the phantom devices of the blog's split count too)."""
        ratios = [d.total / self.ideal_share(j) for j, d in enumerate(self.devices)]
        ideal_equal = self.model_bytes / max(1, len(self.devices))
        ratios += [d.total / ideal_equal for d in self.phantom]
        return max(ratios) if self.model_bytes else 1.0

    def flops_ratio(self) -> float:
        """Max device FLOPs / (the trained model's total / devices)."""
        model_flops = sum(d.flops for d in self.devices + self.phantom)
        if not model_flops:
            return 1.0
        return max(d.flops for d in self.devices + self.phantom) * len(self.devices) / model_flops

    def split_points(self) -> list[str]:
        """Module names where devices 1..n-1 begin: the stage boundaries of a pipeline split."""
        return [d.units[0].name for d in self.devices[1:] if d.units]


def _weights(devices: list[DeviceSpec]) -> list[float]:
    if all(d.limit is not None for d in devices):
        return [float(max(1, d.free or 0)) for d in devices]
    return [1.0] * len(devices)


def _chain(all_units: list[Unit], shape: ModelShape,
           mm: MemoryModel) -> tuple[list[Unit], list[Bytes], list[float], dict[str, Unit]]:
    """Units in placement order with their bytes and FLOPs; a tied head folds into its embedding."""
    chain = [u for u in all_units if not u.tied_to]
    by_name = {u.name: i for i, u in enumerate(chain)}
    costs = [unit_bytes(u, shape, mm) for u in chain]
    flops = [unit_flops(u, shape, mm) for u in chain]
    pinned: dict[str, Unit] = {}
    for u in all_units:
        if u.tied_to:
            if u.tied_to not in by_name:
                raise ValueError(f"{u.name} is tied to {u.tied_to}, which is not among the units")
            i = by_name[u.tied_to]
            costs[i] = costs[i] + unit_bytes(u, shape, mm)
            flops[i] += unit_flops(u, shape, mm)
            pinned[u.tied_to] = u
    return chain, costs, flops, pinned


def _prefix(values: list[float]) -> list[float]:
    out = [0.0]
    for v in values:
        out.append(out[-1] + v)
    return out


def _dp(k: int, n: int, value, allowed, squares: bool) -> list[int] | None:
    """Boundaries `[0, b1, ..., k]` of n non-empty contiguous segments minimizing the max segment
    value (squares=False) or the sum of squared values (squares=True), over allowed segments only."""
    best = [[INF] * (k + 1) for _ in range(n)]
    back = [[-1] * (k + 1) for _ in range(n)]
    for b in range(1, k - n + 2):
        if allowed(0, 0, b):
            v = value(0, 0, b)
            best[0][b] = v * v if squares else v
    for j in range(1, n):
        for b in range(j + 1, k - (n - 1 - j) + 1):
            row, cell = best[j - 1], INF
            for a in range(j, b):
                prev = row[a]
                if prev == INF or not allowed(j, a, b):
                    continue
                v = value(j, a, b)
                cand = prev + v * v if squares else max(prev, v)
                if cand < cell:
                    cell, back[j][b] = cand, a
            best[j][b] = cell
    if best[n - 1][k] == INF:
        return None
    bounds, b = [k], k
    for j in range(n - 1, 0, -1):
        b = back[j][b]
        bounds.append(b)
    return [0] + bounds[::-1]


def _device_plan(spec: DeviceSpec, members: list[int], chain: list[Unit], costs: list[Bytes], flops: list[float],
                 pinned: dict[str, Unit], peak: int, exists: bool = True) -> DevicePlan:
    """The plan of one device holding `chain[i]` for i in `members` (plus the tied head they pin)."""
    units = [chain[i] for i in members] + [pinned[chain[i].name] for i in members if chain[i].name in pinned]
    total = sum((costs[i] for i in members), Bytes())
    if any(chain[i].kind == BLOCK for i in members):
        total = total + Bytes(activations=peak)
    return DevicePlan(spec, units, total, sum(flops[i] for i in members), exists)


def check_device_count(n_devices: int, shape: ModelShape, where: str = "parallel.devices") -> None:
    if n_devices < 1:
        raise UserError(f"{where}: at least one device is needed")
    if n_devices > shape.layers:
        raise UserError(f"{where}: {n_devices} devices but the model has only {shape.layers} decoder "
                        f"blocks (a block is never split); use at most {shape.layers} devices")


def plan_layers(shape: ModelShape, mm: MemoryModel, devices: list[DeviceSpec], balance: str = "memory",
                model_units: list[Unit] | None = None) -> Plan:
    """The balanced in-order placement of `shape` (or of a live model's counted `model_units`)."""
    if balance not in BALANCE:
        raise ValueError(f"balance must be one of {BALANCE}, got {balance!r}")
    check_device_count(len(devices), shape)
    chain, costs, flops, pinned = _chain(model_units or shape_units(shape), shape, mm)
    n, k = len(devices), len(chain)
    mem_prefix = _prefix([c.total for c in costs])
    flop_prefix = _prefix(flops)
    block_prefix = _prefix([1.0 if u.kind == BLOCK else 0.0 for u in chain])
    peak = device_peak_bytes(shape, mm)
    weights = _weights(devices)
    free = [d.free for d in devices]

    def seg_bytes(a: int, b: int) -> float:
        has_block = block_prefix[b] - block_prefix[a] > 0
        return mem_prefix[b] - mem_prefix[a] + (peak if has_block else 0)

    def by_memory(j: int, a: int, b: int) -> float:
        return seg_bytes(a, b) / weights[j]

    def by_compute(j: int, a: int, b: int) -> float:
        return flop_prefix[b] - flop_prefix[a]

    def fits(j: int, a: int, b: int) -> bool:
        return free[j] is None or seg_bytes(a, b) <= free[j]

    def anything(j: int, a: int, b: int) -> bool:
        return True

    value = by_memory if balance == "memory" else by_compute
    allowed, label = fits, f"balanced by {balance}"
    first = _dp(k, n, value, fits, squares=False)
    if first is None:  # nothing fits: show the least-overloaded split
        value, allowed, label = by_memory, anything, "least overloaded (does not fit)"
        first = _dp(k, n, value, allowed, squares=False)
        assert first is not None
    bottleneck = max(value(j, first[j], first[j + 1]) for j in range(n))
    tolerance = bottleneck * (1 + 1e-9) + 1e-9

    def within(j: int, a: int, b: int) -> bool:
        return allowed(j, a, b) and value(j, a, b) <= tolerance

    bounds = _dp(k, n, value, within, squares=True)
    assert bounds is not None
    plans = [_device_plan(spec, list(range(bounds[j], bounds[j + 1])), chain, costs, flops, pinned, peak)
             for j, spec in enumerate(devices)]
    return Plan(shape, mm, plans, label)


def plan_stage(shape: ModelShape, mm: MemoryModel, devices: list[DeviceSpec], roles: list[Role],
               balance: str = "memory") -> Plan:
    """The trained model's plan after the stage's other models (`roles`), each whole on the first device,
    took their bytes there; the roles' rows are the plan's `roles`."""
    rows: list[DevicePlan] = []
    taken = 0
    for role in roles:
        spec = replace(devices[0], used=devices[0].used + taken)
        row = plan_layers(role.shape, role.memory, [spec]).devices[0]
        rows.append(replace(row, label=role.label))
        taken += row.total
    specs = [replace(devices[0], used=devices[0].used + taken)] + devices[1:]
    plan = plan_layers(shape, mm, specs, balance)
    plan.roles, plan.role_models = rows, list(roles)
    return plan


def blog_even_split(shape: ModelShape, mm: MemoryModel, devices: list[DeviceSpec],
                    model_units: list[Unit] | None = None) -> Plan:
    """The blog's sketch's mapping: block i on device `i // (layers // gpus)`, which runs past the last
    device when the layers do not divide evenly. The embedding goes on the first device and the norm and
    head on the last real one (the sketch ignores them; this is its best case)."""
    n = len(devices)
    check_device_count(n, shape)
    per = shape.layers // n
    all_units = model_units or shape_units(shape)
    chain, costs, flops, pinned = _chain(all_units, shape, mm)
    peak = device_peak_bytes(shape, mm)
    index = [0 if u.kind == EMBED else (u.layer // per if u.kind == BLOCK else n - 1) for u in chain]
    plans = [_device_plan(devices[j] if j < n else DeviceSpec(f"#{j} (missing)", limit=0),
                          [i for i in range(len(chain)) if index[i] == j], chain, costs, flops, pinned, peak,
                          exists=j < n)
             for j in range(max(index) + 1)]
    return Plan(shape, mm, plans[:n], "blog sketch even split", phantom=plans[n:])


def min_devices(shape: ModelShape, mm: MemoryModel, limit: int, model_units: list[Unit] | None = None) -> int | None:
    """Fewest devices of `limit` bytes each that hold the model in order (greedy fill is optimal for
    equal devices); None when one module alone does not fit."""
    chain, costs, _, _ = _chain(model_units or shape_units(shape), shape, mm)
    peak = device_peak_bytes(shape, mm)
    count, current, has_block = 1, 0, False
    for unit, cost in zip(chain, costs):
        extra = peak if unit.kind == BLOCK and not has_block else 0
        if current + cost.total + extra > limit:
            alone = cost.total + (peak if unit.kind == BLOCK else 0)
            if alone > limit:
                return None
            count, current, has_block = count + 1, alone, unit.kind == BLOCK
        else:
            current += cost.total + extra
            has_block = has_block or unit.kind == BLOCK
    return count
