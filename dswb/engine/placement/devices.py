"""Devices for a plan: `"auto"` resolved to the visible GPUs, and each device's memory limit.

A limit comes from `parallel.max_memory` (one size for every device, or one per device), else from
the device itself (`torch.cuda.mem_get_info`: free bytes now). A CPU has no limit the planner can
trust (every "cpu" entry shares one RAM), so it is unknown unless given. torch is imported only to
resolve "auto" or read a GPU; planning hypothetical devices needs none.
"""

from __future__ import annotations

from dswb.config.parallel import parse_size
from dswb.engine.placement.planner import DeviceSpec
from dswb.errors import UserError


def normalize(name: str) -> str:
    return "cuda:0" if name == "cuda" else name


def resolve_devices(names: list[str]) -> list[str]:
    """`["auto"]` -> `cuda:0..n-1` (every visible GPU), or `["cpu"]` without one; `cuda` -> `cuda:0`."""
    if names == ["auto"]:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    return [normalize(n) for n in names]


def read_limit(name: str) -> int | None:
    """Free bytes of a CUDA device now; None for a CPU."""
    if not name.startswith("cuda"):
        return None
    import torch

    index = int(name.partition(":")[2] or 0)
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise UserError(f"parallel.devices: {name} is not a visible CUDA device "
                        f"({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible)")
    free, _total = torch.cuda.mem_get_info(index)
    return int(free)


def device_specs(names: list[str], sizes: list[str | None], used: dict[str, int] | None = None,
                 where: str = "parallel.max_memory") -> list[DeviceSpec]:
    """`DeviceSpec`s for resolved device names. `sizes[i]` is the limit of `names[i]` as text
    ("80GB"), None to read it from the device; `used` holds bytes already taken per device name."""
    specs = []
    for name, size in zip(names, sizes, strict=True):
        if size is None:
            limit = read_limit(name)
        else:
            try:
                limit = parse_size(size)
            except ValueError as exc:
                raise UserError(f"{where}: {exc}") from None
        specs.append(DeviceSpec(name, limit, (used or {}).get(name, 0)))
    return specs


def sizes_for(names: list[str], devices: list[str], max_memory: list[str]) -> list[str | None]:
    """The `max_memory` entry of each name: the only one, or the one at that device's position in
    `devices` (per-device sizes); None where none applies (read from the device)."""
    if len(max_memory) == 1:
        return [max_memory[0]] * len(names)
    by_name = dict(zip(resolve_devices(devices), max_memory)) if max_memory else {}
    return [by_name.get(n) for n in names]
