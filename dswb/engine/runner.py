"""Run a whole pipeline in this process: create/reopen the run directory, run each stage, and
leave a truthful final state (`finished`, `stopped`, `failed`) whatever happens.

Exit codes: 0 finished, 1 failed (a training fault), 2 user error, 130 stopped.

What every stage inherits from here: on a resume, final models and checkpoints are verified
against their manifests first (a corrupt one is moved aside with an alert and the run falls back
to the newest one that verifies); a resume with nothing left to do ends `finished`; a full disk
anywhere (checkpoint, events, status, log, data cache, final model) ends the run `failed` with
one line naming the path and the free space, written wherever it still can be.
Each stage runs with its own torch CPU threads (its section's `threads`, else `run.threads`); a
resumed stage keeps the count its checkpoint records, so it stays bitwise equal.

Under torchrun (or a distributed `[parallel] mode`) every rank runs this same function: rank 0
writes the run directory (with the world size and every rank's device in `run_start` and
`status.json`), the other ranks log to `train.rank-<r>.log` (`dswb.engine.distributed.ranks`); only
rank 0 moves corrupt checkpoints aside. A rank that dies or hangs makes a collective fail on the
others: the run ends `failed` with one line naming the rank where it can (a rank leaves its own
error in the launcher's store before it exits).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from dswb.config.load import config_to_dict, config_to_toml
from dswb.config.schema import Config
from dswb.engine.checkpoint.final import is_complete, remove_partial, verify_final
from dswb.engine.checkpoint.layout import STATE_FILE, latest_checkpoint, quarantine, select_checkpoint
from dswb.engine.context import StageContext
from dswb.engine.distributed.ranks import DistributedControl, RankMonitor, RankSync
from dswb.engine.distributed.world import World, end_world, ensure_world, is_collective_failure
from dswb.engine.eval.harness import check_run_tasks
from dswb.engine.model.device import autocast_dtype, select_device, set_determinism
from dswb.engine.telemetry.control import RunControl
from dswb.engine.telemetry.monitor import Monitor, Reporter
from dswb.engine.telemetry.sinks import SinkPump, make_sinks
from dswb.engine.telemetry.system import SystemSampler
from dswb.errors import EXIT_USER_ERROR, TrainingFailed, UserError
from dswb.rundir.layout import RunPaths
from dswb.rundir.space import disk_full_error, is_disk_full
from dswb.rundir.status import new_status, process_start_time, read_status
from dswb.util.atomic import write_atomic

STAGE_MODULES = {stage: f"dswb.engine.stages.{stage}" for stage in ("pretrain", "sft", "rm", "dpo", "ppo", "grpo")}
EXIT_CODES = {"finished": 0, "failed": 1, "stopped": 130}
CORRUPT_EXPLAIN = ("The file's size or checksum differs from the manifest written with it: the bytes changed on "
                   "disk after training wrote them (a disk or filesystem fault, a copy cut short, an edit). The "
                   "directory was moved aside (corrupt-*) for inspection; `dswb runs verify RUN` checks a whole run.")
DEFAULT_THREADS = torch.get_num_threads()   # torch's own count, before anything here sets it for good


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (UserError, TrainingFailed)) else f"{type(exc).__name__}: {text}"


def _open_run(config: Config, paths: RunPaths, resume: bool, reporter: Reporter | None,
              argv: list[str] | None, world: World | None = None) -> Monitor:
    ranks = None
    if world is not None:
        ranks = RankSync(world)
        if not world.is_main:
            return RankMonitor(paths, {}, world, ranks, ema=config.monitor.ema)
    if not resume or not paths.config.exists():
        write_atomic(paths.config, config_to_toml(config), fsync=False)
    previous = read_status(paths.status) if resume else None
    status = new_status(config.run.stages[0], config.train.steps)
    status.update(run_id=paths.run_id, stages=list(config.run.stages), pid_started=process_start_time(os.getpid()))
    distributed = {} if world is None else {"world_size": world.size, "parallel_mode": world.mode, "ranks": world.ranks}
    if world is not None and not world.created_here:
        distributed["launcher_pid"] = os.getppid()   # torchrun's agent
    status.update(distributed)
    if previous:
        status["started"] = previous.get("started") or status["started"]
        status["resumed"] = (previous.get("resumed") or 0) + 1
    monitor = Monitor(paths, status, ema=config.monitor.ema, reporter=reporter, ranks=ranks)
    if config.monitor.report_to:   # rank 0 only (the other ranks returned above)
        monitor.attach_sinks(SinkPump(make_sinks(config.monitor.report_to), paths.root, config_to_dict(config)))
    monitor.emit("run_start", None, 0, run_id=paths.run_id, config=config_to_dict(config),
                 argv=argv or sys.argv, resumed=bool(resume), pid=os.getpid(), **distributed)
    monitor.log(f"run {paths.run_id} {'resumed' if resume else 'started'} (pid {os.getpid()})", event=False)
    return monitor


def _final_verifies(monitor: Monitor, stage: str, final_dir: Path) -> bool:
    """On a resume: is the stage's final model intact? A corrupt one is moved aside (the stage then
    finishes again from its last checkpoint)."""
    result = verify_final(final_dir)
    if result.status == "unverified":
        monitor.log(f"{final_dir} has no manifest (written before manifests existed): not verified",
                    level="warning", stage=stage)
    if result.ok:
        return True
    moved = quarantine(final_dir)
    monitor.alert(stage, 0, "final_corrupt", f"final model {final_dir} failed verification "
                  f"({'; '.join(result.problems)}); moved aside to {moved.name}, finishing the stage again "
                  f"from its last checkpoint", CORRUPT_EXPLAIN, level="error")
    return False


def _choose_checkpoint(monitor: Monitor, stage: str, stage_dir: Path) -> None:
    """On a resume: verify the stage's checkpoints newest first; move corrupt ones aside so the
    stage resumes from the newest checkpoint that verifies, and say which."""
    selection = select_checkpoint(stage_dir)
    chosen = selection.checkpoint
    if chosen is not None and selection.verification.status == "unverified":
        monitor.log(f"checkpoint {chosen.path.name} has no manifest (written before manifests existed): "
                    f"loaded without verification", level="warning", stage=stage)
    if not selection.rejected:
        return
    if chosen is None:
        bad = selection.rejected[0]
        raise TrainingFailed(f"every checkpoint of stage {stage} failed verification (newest: {bad.path}: "
                             f"{'; '.join(bad.problems)}); `dswb runs verify` lists them; move them aside "
                             f"to train the stage from the start")
    for bad in selection.rejected:
        moved = quarantine(bad.path)
        monitor.alert(stage, int(bad.path.name[5:]), "checkpoint_corrupt",
                      f"checkpoint {bad.path.name} failed verification ({'; '.join(bad.problems)}); "
                      f"moved aside to {moved.name}; resuming from {chosen.path.name}", CORRUPT_EXPLAIN, level="error")
    monitor.log(f"falling back to {chosen.path.name}, the newest checkpoint that verifies", level="warning",
                stage=stage, step=chosen.step)


def _oom_message(exc: BaseException) -> str:
    return ("CUDA out of memory outside a training step (" + " ".join(str(exc).split())[:200] + "); lower "
            "batching.max_tokens or eval.max_batches, or use a smaller model")


def run_training(config: Config, paths: RunPaths, *, resume: bool = False, reporter: Reporter | None = None,
                 argv: list[str] | None = None, outcome: dict | None = None) -> int:
    """Train every stage of `config` into `paths`; returns the process exit code.

    `outcome`, when given, receives `state` and `error` (also when status.json could not be
    written: a full disk) and `unwritten`, the run files the end could not be recorded in.
    """
    outcome = {} if outcome is None else outcome
    world = ensure_world(config)
    if world is not None and not world.ranks:
        world.describe_ranks()
    try:
        monitor = _open_run(config, paths, resume, reporter, argv, world)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        outcome.update(state="failed", error=str(disk_full_error(exc, [paths.root])), unwritten=["status.json"])
        return 1
    control = RunControl(paths.root)
    if world is not None:
        control = DistributedControl(control, world)
    control.install_signal_handlers()
    sampler = None
    state, error, code = "failed", None, 1
    cache_root = Path(config.data.cache_dir) if config.data.cache_dir else paths.root.parent / ".cache"
    try:
        device = select_device(config.run.device)
        set_determinism(config.run.seed, config.run.threads)
        sampler = SystemSampler(interval_s=config.monitor.system_every_s, disk_path=paths.root).start()
        if monitor.ranks is not None:
            monitor.ranks.sampler = sampler
        monitor.log(f"device {device}, precision {autocast_dtype(device, config.run.precision) or 'fp32'}", event=False)
        if world is not None:
            monitor.log(world.describe())
        base = StageContext(config=config, paths=paths, monitor=monitor, control=control, device=device,
                            amp_dtype=autocast_dtype(device, config.run.precision), cache_root=cache_root,
                            resume=resume, system=sampler)
        check_run_tasks(config, world is not None)   # lm-eval task names, before any training
        state = _run_stages(base, world)
        code = EXIT_CODES[state]
    except KeyboardInterrupt:
        state, error, code = "stopped", "interrupted (second Ctrl-C): no checkpoint taken", 130
    except Exception as exc:  # noqa: BLE001 - every failure ends the run with one line
        state, code = "failed", EXIT_USER_ERROR if isinstance(exc, UserError) else 1
        error = _failure_line(exc, world, [paths.root, cache_root])
        if not isinstance(exc, (UserError, TrainingFailed)):   # a bug or an environment fault: keep the traceback
            try:
                monitor.log(traceback.format_exc(), level="error", event=False)
            except OSError:
                pass
    finally:
        control.restore_signal_handlers()
        if sampler is not None:
            sampler.stop()
        if state == "stopped" and control.stop_reason:
            try:
                monitor.log(f"stopped ({control.stop_reason})", stage=monitor.status.get("stage"))
            except OSError:
                pass
        if world is not None and state == "failed":
            world.report_failure(error or "failed")
        unwritten = monitor.finish(state, error, ended=time.time())
        outcome.update(state=state, error=error, unwritten=unwritten)
        if world is not None and world.created_here:
            end_world()
    return code


def _run_stages(base: StageContext, world: World | None) -> str:
    """Each stage of the run in turn (a finished one is skipped on a resume); the run's state."""
    monitor, paths, resume = base.monitor, base.paths, base.resume
    previous_final = None
    finals: dict[str, Path] = {}
    state = "finished"   # what a resume with every stage already done ends as
    main = world is None or world.is_main
    for stage in base.config.run.stages:
        final_dir = paths.final(stage)
        if main and remove_partial(final_dir):
            monitor.log("removed an incomplete final model left by an interrupted write", stage=stage)
        done = resume and is_complete(final_dir) and (not main or _final_verifies(monitor, stage, final_dir))
        if world is not None:
            done = world.broadcast(done)
        if done:
            monitor.log("already finished, skipping", stage=stage)
            previous_final = finals[stage] = final_dir
            continue
        if resume and main:
            _choose_checkpoint(monitor, stage, paths.checkpoints(stage))
        if world is not None:   # rank 0 has moved corrupt checkpoints aside: every rank now sees the same
            world.barrier()
        monitor.write_status(force=True, state="running", stage=stage)
        _set_stage_threads(base, stage)
        ctx = replace(base, previous_final=previous_final, finals=dict(finals))
        state = importlib.import_module(STAGE_MODULES[stage]).run(ctx)
        if state != "finished":
            monitor.emit("stage_end", stage, monitor.status.get("step", 0), state=state)
            break
        previous_final = finals[stage] = final_dir
    return state


def _thread_count(value: int) -> int:
    """A configured thread count as torch's count (0: torch's default at process start)."""
    return value if value > 0 else DEFAULT_THREADS


def _started_threads(base: StageContext, stage: str) -> int | None:
    """The thread count the stage started with, as recorded in the checkpoint it resumes from
    (None: it starts afresh, or the checkpoint predates the record)."""
    ckpt = latest_checkpoint(base.paths.checkpoints(stage)) if base.resume else None
    if ckpt is None:
        return None
    try:
        threads = json.loads((ckpt.path / STATE_FILE).read_text()).get("threads")
    except (OSError, ValueError):
        return None   # the stage's own resume reports an unreadable checkpoint
    return threads if isinstance(threads, int) and threads > 0 else None


def _set_stage_threads(base: StageContext, stage: str) -> None:
    """Set torch's CPU threads for `stage`: its section's `threads` (-1: run.threads; 0: torch's
    default), or on a resume the count it started with (thread counts change float results, so a
    resumed stage stays bitwise equal only with the same count). The count is recorded in every
    checkpoint's trainer state (`dswb.engine.train.loop`)."""
    config = base.config
    section = "train" if stage == "pretrain" else stage
    configured = getattr(config, section).threads
    field = f"{section}.threads" if configured >= 0 else "run.threads"
    run_count = _thread_count(config.run.threads)
    count = _thread_count(configured) if configured >= 0 else run_count
    started = _started_threads(base, stage)
    if started is not None and started != count:
        base.monitor.log(f"threads: {stage} resumes with {started} threads, as it started ({field} now says "
                         f"{count})", stage=stage)
        count = started
    elif count != run_count:
        base.monitor.log(f"threads: {count} for {stage} ({field}; the run's: {run_count})", stage=stage)
    torch.set_num_threads(count)


def _failure_line(exc: BaseException, world: World | None, roots: list[Path]) -> str:
    """The one line a failed run ends with."""
    if isinstance(exc, (UserError, TrainingFailed)):
        return _one_line(exc)
    if world is not None and is_collective_failure(exc):
        return world.explain_failure(exc)
    if is_disk_full(exc, roots):
        return str(disk_full_error(exc, roots))
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return _oom_message(exc)
    return _one_line(exc)
