"""`[parallel]`: how a model is spread over devices, and memory sizes such as "80GB".

`mode = "layers"` places the model's modules over `devices` in this one process (see
docs/parallel.md); the distributed modes (DDP, FSDP, pipeline) will add their names to
`PARALLEL_MODES`. Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dswb.config.fields import doc

PARALLEL_MODES = ("none", "layers")
ROLES = ("policy", "reference", "value", "reward")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.I)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass
class ParallelConfig:
    mode: str = doc("none", "none: the whole model on run.device; layers: its modules spread over `devices` in this "
                    "one process (a decoder block is never split).", choices=PARALLEL_MODES)
    devices: list[str] = doc(None, "Devices for `layers` mode, in forward order: [\"auto\"] (every visible GPU) or "
                             "e.g. [\"cuda:0\", \"cuda:1\"]; the first one is the run's device.",
                             factory=lambda: ["auto"])
    max_memory: list[str] = doc(None, "Memory the planner may use per device, e.g. [\"70GB\"] for each or one entry "
                                "per device (GB = 10^9, GiB = 2^30); empty: the free memory each GPU reports.",
                                factory=list)
    balance: str = doc("memory", "Split by memory (each device's share in proportion to its limit) or by compute "
                       "(FLOPs per device), always within the limits.", choices=("memory", "compute"))
    activation_checkpointing: bool = doc(False, "Recompute each decoder block in the backward pass: only block "
                                         "inputs are kept (far less activation memory, ~1/3 more compute).")
    policy_devices: list[str] = doc(None, "RL stages: devices of the policy model (empty: `devices`; one device without layers mode).", factory=list)
    reference_devices: list[str] = doc(None, "RL stages: devices of the frozen reference model (empty: `devices`).",
                                       factory=list)
    value_devices: list[str] = doc(None, "PPO: devices of the value model (empty: `devices`; one device without layers mode).", factory=list)
    reward_devices: list[str] = doc(None, "RL stages: devices of the reward model (empty: `devices`; one device without layers mode).", factory=list)


def parse_size(text: str) -> int:
    """`"80GB"` -> 80 * 10**9, `"1.5GiB"`, `"512 MB"`, `"1000"` (bytes); ValueError otherwise."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a memory size such as 80GB, 79.5GiB or 512MB")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    return int(number * _UNITS[unit])


def role_devices(config, role: str) -> list[str]:
    """The devices of one role (policy, reference, value, reward): its own list, else `devices`.
    Without layers mode, a role's own list holds one device: the whole model goes there."""
    own = getattr(config.parallel, f"{role}_devices")
    return list(own) if own else list(config.parallel.devices)


def validate_parallel(config, where: str) -> None:
    """Checks of `[parallel]` that involve more than one field (raise `UserError`)."""
    from dswb.errors import UserError

    p = config.parallel
    lists = [("devices", p.devices)] + [(f"{r}_devices", getattr(p, f"{r}_devices")) for r in ROLES]
    for key, devices in lists:
        if key == "devices" and not devices:
            raise UserError(f"{where}: parallel.devices: give [\"auto\"] or at least one device")
        for i, name in enumerate(devices):
            if name == "auto" and len(devices) == 1:
                continue
            if name == "auto":
                raise UserError(f"{where}: parallel.{key}: \"auto\" stands alone, not in a list of devices")
            if not _DEVICE.match(name):
                raise UserError(f"{where}: parallel.{key}[{i}]: {name!r} is not a device (cpu, cuda or cuda:N)")
            if name.startswith("cuda") and config.run.device == "cpu":
                raise UserError(f"{where}: parallel.{key}[{i}]: {name!r} is a GPU but run.device = 'cpu'")
        gpus = ["cuda:0" if n == "cuda" else n for n in devices if n.startswith("cuda")]
        repeated = sorted({n for n in gpus if gpus.count(n) > 1})
        if repeated:
            raise UserError(f"{where}: parallel.{key}: {repeated[0]} is listed twice (each entry is its own device; "
                            f"only \"cpu\" may repeat)")
        if key != "devices" and len(devices) > 1 and p.mode != "layers":
            raise UserError(f"{where}: parallel.{key}: several devices split a model by layers: that needs "
                            f"parallel.mode = 'layers' (without it, give one device for the whole {key[:-8]} model)")
    for i, size in enumerate(p.max_memory):
        try:
            if parse_size(size) <= 0:
                raise ValueError(f"{size!r} is not a positive size")
        except ValueError as exc:
            raise UserError(f"{where}: parallel.max_memory[{i}]: {exc}") from None
    explicit = p.devices != ["auto"]
    if len(p.max_memory) > 1 and (not explicit or len(p.max_memory) != len(p.devices)):
        count = f"{len(p.devices)} devices" if explicit else 'devices = ["auto"]'
        raise UserError(f"{where}: parallel.max_memory: give one size for every device or one per device "
                        f"({len(p.max_memory)} sizes for {count})")
    if p.mode == "layers" and explicit and config.run.device == "cuda" and not p.devices[0].startswith("cuda"):
        raise UserError(f"{where}: parallel.devices[0]: the first device holds the embedding and must be the "
                        f"run's device (run.device = 'cuda'), got {p.devices[0]!r}")
