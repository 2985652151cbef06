"""Run a whole pipeline in this process: create/reopen the run directory, run each stage, and
leave a truthful final state (`finished`, `stopped`, `failed`) whatever happens.

Exit codes: 0 finished, 1 failed (a training fault), 2 user error, 130 stopped.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from pathlib import Path

from dswb.config.load import config_to_dict, config_to_toml
from dswb.config.schema import Config
from dswb.engine.context import StageContext
from dswb.engine.control import RunControl
from dswb.engine.device import autocast_dtype, select_device, set_determinism
from dswb.engine.final import is_complete
from dswb.engine.monitor import Monitor, Reporter
from dswb.engine.system import SystemSampler
from dswb.errors import EXIT_USER_ERROR, TrainingFailed, UserError
from dswb.rundir.layout import RunPaths
from dswb.rundir.status import new_status, read_status

STAGE_MODULES = {"pretrain": "dswb.engine.stages.pretrain"}
EXIT_CODES = {"finished": 0, "failed": 1, "stopped": 130}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (UserError, TrainingFailed)) else f"{type(exc).__name__}: {text}"


def run_training(config: Config, paths: RunPaths, *, resume: bool = False, reporter: Reporter | None = None,
                 argv: list[str] | None = None) -> int:
    """Train every stage of `config` into `paths`; returns the process exit code."""
    if not resume or not paths.config.exists():
        paths.config.write_text(config_to_toml(config))
    previous = read_status(paths.status) if resume else None
    status = new_status(config.run.stages[0], config.train.steps)
    status.update(run_id=paths.run_id, stages=list(config.run.stages))
    if previous:
        status["started"] = previous.get("started", status["started"])
        status["resumed"] = previous.get("resumed", 0) + 1
    monitor = Monitor(paths, status, ema=config.monitor.ema, reporter=reporter)
    monitor.emit("run_start", None, 0, run_id=paths.run_id, config=config_to_dict(config),
                 argv=argv or sys.argv, resumed=bool(resume), pid=os.getpid())
    monitor.log(f"run {paths.run_id} {'resumed' if resume else 'started'} (pid {os.getpid()})", event=False)
    control = RunControl(paths.root)
    control.install_signal_handlers()
    sampler = None
    state, error, code = "failed", None, 1
    try:
        device = select_device(config.run.device)
        set_determinism(config.run.seed, config.run.threads)
        sampler = SystemSampler(interval_s=config.monitor.system_every_s).start()
        cache_root = Path(config.data.cache_dir) if config.data.cache_dir else paths.root.parent / ".cache"
        monitor.log(f"device {device}, precision {autocast_dtype(device, config.run.precision) or 'fp32'}", event=False)
        previous_final = None
        for stage in config.run.stages:
            final_dir = paths.final(stage)
            if resume and is_complete(final_dir):
                monitor.log("already finished, skipping", stage=stage)
                previous_final = final_dir
                continue
            monitor.write_status(force=True, state="running", stage=stage)
            ctx = StageContext(config=config, paths=paths, monitor=monitor, control=control, device=device,
                               amp_dtype=autocast_dtype(device, config.run.precision), cache_root=cache_root,
                               resume=resume, system=sampler, previous_final=previous_final)
            state = importlib.import_module(STAGE_MODULES[stage]).run(ctx)
            if state != "finished":
                monitor.emit("stage_end", stage, monitor.status.get("step", 0), state=state)
                break
            previous_final = final_dir
        code = EXIT_CODES[state]
    except UserError as exc:
        state, error, code = "failed", _one_line(exc), EXIT_USER_ERROR
    except TrainingFailed as exc:
        state, error, code = "failed", _one_line(exc), 1
    except KeyboardInterrupt:
        state, error, code = "stopped", "interrupted (second Ctrl-C): no checkpoint taken", 130
    except Exception as exc:  # a bug or an environment fault: keep the traceback in train.log
        state, error, code = "failed", _one_line(exc), 1
        monitor.log(traceback.format_exc(), level="error", event=False)
    finally:
        control.restore_signal_handlers()
        if sampler is not None:
            sampler.stop()
        if error:
            monitor.log(f"error: {error}", level="error", stage=monitor.status.get("stage"))
        if state == "stopped" and control.stop_reason:
            monitor.log(f"stopped ({control.stop_reason})", stage=monitor.status.get("stage"))
        monitor.write_status(force=True, state=state, error=error, ended=time.time())
        monitor.emit("run_end", None, monitor.status.get("step", 0), state=state, error=error)
        monitor.close()
    return code
