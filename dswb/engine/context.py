"""What every stage receives: config, run paths, monitor, control, device and the previous stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dswb.config.schema import Config
from dswb.engine.telemetry.control import RunControl
from dswb.engine.telemetry.monitor import Monitor
from dswb.rundir.layout import RunPaths


@dataclass
class StageContext:
    config: Config
    paths: RunPaths
    monitor: Monitor
    control: RunControl
    device: torch.device
    amp_dtype: torch.dtype | None
    cache_root: Path
    resume: bool
    system: Any = None          # SystemSampler or None
    previous_final: Path | None = None  # final/<previous stage>, the model this stage starts from
    finals: dict[str, Path] = field(default_factory=dict)  # final model of every stage finished so far, in order
