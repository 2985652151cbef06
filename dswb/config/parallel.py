"""`[parallel]`: how a model is spread over devices, and memory sizes such as "80GB".

`mode = "layers"` places the model's modules over `devices` in this one process; the distributed
modes (`ddp`, `fsdp`, `pipeline`) run one process per device under torchrun (`dswb run --nproc N`),
see docs/parallel.md. Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dswb.config.fields import doc

DISTRIBUTED_MODES = ("ddp", "fsdp", "pipeline")
PARALLEL_MODES = ("none", "layers") + DISTRIBUTED_MODES
PIPELINE_STAGES = ("pretrain", "sft")       # the LM stages: a pipeline cannot generate (RL) or score pairs
RL_DISTRIBUTED_MODES = ("ddp",)
ROLES = ("policy", "reference", "value", "reward")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.I)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass
class ParallelConfig:
    mode: str = doc("none", "none: the whole model on run.device; layers: its modules spread over `devices` in this "
                    "one process (a decoder block is never split); ddp, fsdp, pipeline: one process per device "
                    "under torchrun (`dswb run --nproc N`): replicated (DDP), sharded (FSDP2) or split into "
                    "pipeline stages.", choices=PARALLEL_MODES)
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
    fsdp_precision: str = doc("auto", "FSDP2 mixed precision: bf16 (bf16 compute copies of the weights, fp32 gradient "
                              "reduction) or fp32; auto: bf16 when run.precision gives bf16 (a GPU), else fp32.",
                              choices=("auto", "bf16", "fp32"))
    fsdp_cpu_offload: bool = doc(False, "FSDP2: keep the sharded weights, gradients and optimizer state in CPU memory "
                                 "(the optimizer step runs on the CPU): bigger models, slower steps.")
    fsdp_reshard_after_forward: bool = doc(True, "FSDP2: free each block's gathered weights after its forward and "
                                           "gather them again for the backward (less memory, more communication).")
    pipeline_schedule: str = doc("1f1b", "Pipeline schedule: 1f1b (one forward, one backward: fewer activations "
                                 "held) or gpipe (all forwards, then all backwards).", choices=("1f1b", "gpipe"))
    microbatches: int = doc(4, "Pipeline: micro-batches each batch is cut into (by rows), so the stages work at "
                            "once; more of them shrink the pipeline's idle bubble.", min=1)
    timeout_s: float = doc(300.0, "Distributed modes: seconds a rank waits for the others in a collective before "
                           "the run fails (a rank that hangs stops the run after this long; one that dies, at once).",
                           min=5.0)


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
    if p.mode in DISTRIBUTED_MODES:
        validate_distributed(config, where)
    if p.mode == "layers" and explicit and config.run.device == "cuda" and not p.devices[0].startswith("cuda"):
        raise UserError(f"{where}: parallel.devices[0]: the first device holds the embedding and must be the "
                        f"run's device (run.device = 'cuda'), got {p.devices[0]!r}")


def validate_distributed(config, where: str) -> None:
    """Combinations the distributed modes (one process per device) cannot run."""
    from dswb.errors import UserError

    p = config.parallel
    if p.devices != ["auto"] or any(getattr(p, f"{r}_devices") for r in ROLES):
        raise UserError(f"{where}: parallel.devices: with mode = '{p.mode}' each process uses its own device "
                        f"(GPU number LOCAL_RANK, or the CPU): leave parallel.devices = [\"auto\"] and the role "
                        f"device lists empty")
    if p.mode == "pipeline":
        other = [s for s in config.run.stages if s not in PIPELINE_STAGES]
        if other:
            raise UserError(f"{where}: parallel.mode = 'pipeline' runs the {' and '.join(PIPELINE_STAGES)} stages "
                            f"(a pipeline cannot generate or score pairs); run.stages has {other[0]}: use ddp or fsdp")
    rl = [s for s in config.run.stages if s in ("ppo", "grpo")]
    if rl and p.mode not in RL_DISTRIBUTED_MODES:
        raise UserError(f"{where}: parallel.mode = '{p.mode}': the {rl[0]} stage runs under ddp only (each process "
                        f"generates its share of the prompts with a whole policy)")
    if p.fsdp_cpu_offload and (p.mode != "fsdp" or config.run.device == "cpu"):
        raise UserError(f"{where}: parallel.fsdp_cpu_offload moves FSDP2's GPU shards to CPU memory: it needs "
                        f"parallel.mode = 'fsdp' on GPUs (mode is '{p.mode}', run.device '{config.run.device}')")
    if config.fp8.enabled and p.mode != "ddp":
        raise UserError(f"{where}: fp8.enabled with parallel.mode = '{p.mode}' is not supported: use ddp")
    if config.train.compile and p.mode != "ddp":
        raise UserError(f"{where}: train.compile with parallel.mode = '{p.mode}' is not supported: use ddp")
