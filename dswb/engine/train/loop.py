"""The training loop shared by every stage (pretraining, SFT, RM, DPO, PPO, GRPO).

`run_loop` reads top to bottom: control -> lr -> step -> metrics -> eval -> checkpoint. What a
step *is* belongs to the stage: `LoopParts.step` performs one optimizer step (an LM step over
micro-batches, a preference step, or a whole RL iteration: rollout, scoring, updates) and returns
a `StepOutput`. Everything else (pause/stop/checkpoint commands, the lr schedule, non-finite
handling, metrics, system samples, periodic eval and checkpoints) is the same for every stage.
In a distributed run every rank runs this loop in step: the control flags and (with a time limit)
the step time are agreed over the ranks, so every rank takes the same decisions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator

import torch

from dswb.engine.checkpoint.io import save_checkpoint
from dswb.engine.checkpoint.layout import latest_checkpoint, warn_low_space
from dswb.engine.context import StageContext
from dswb.engine.distributed.world import active as active_world
from dswb.engine.telemetry.mfu import describe as describe_mfu
from dswb.engine.telemetry.mfu import device_peak, throughput_metrics
from dswb.engine.train.optim import set_lr
from dswb.engine.train.schedule import lr_at
from dswb.engine.train.step import train_step
from dswb.errors import TrainingFailed

NONFINITE_EXPLAIN = ("The loss or gradient norm was NaN/Inf, so the update was skipped. Usual causes: "
                     "a learning rate too high for the model, fp16 overflow, or bad data. Lower the stage's lr, "
                     "raise its warmup_steps or keep gradient clipping on.")
OOM_EXPLAIN = ("The GPU ran out of memory in a training step. Activation memory grows with the tokens of one "
               "micro-batch: lower batching.max_tokens, and raise the stage's grad_accum to keep the tokens per "
               "step (edit the run's config.toml, then `dswb run --resume`), or use a smaller model.")


@dataclass
class StepOutput:
    """What one step reports: its loss, whether it was applied, metrics to log, tokens processed."""

    loss: float
    finite: bool = True
    metrics: dict = field(default_factory=dict)
    tokens: int = 0   # tokens processed by this step (tokens_per_s)


StepFn = Callable[[int], StepOutput]   # called with the 0-based index of the step it performs


@dataclass
class LoopParts:
    stage: str
    model: torch.nn.Module                  # what checkpoints save (all trainable weights of the stage)
    optimizer: torch.optim.Optimizer
    step: StepFn
    data_state: Callable[[], dict]          # the data position of the next step
    evaluate: Callable[[int], dict]         # step -> eval metrics
    optim: Any                              # the stage's OptimSettings: steps, lr, schedule, warmup...
    start_step: int = 0
    end_step: int | None = None             # set by run_loop when the stage finishes (a time limit may end it early)
    state: dict = field(default_factory=dict)   # counters carried across resumes
    eval_every: int | None = None           # None: `eval.every`
    stop_when: Callable[[dict], str | None] | None = None  # eval metrics -> a reason to end the stage now
    # Extra per-step metrics from any component (e.g. FP8 amax statistics), merged into each metrics event.
    metric_sources: list[Callable[[], dict]] = field(default_factory=list)
    # Called with the finished step's number after its metrics (e.g. FP8 events and alerts).
    step_hooks: list[Callable[[int], None]] = field(default_factory=list)
    flops_per_token: float = 0.0            # training FLOPs per real token (`mfu.py`); 0: no tflops/mfu


def lm_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator, ctx: StageContext,
            grad_accum: int, clip_grad: float, data_wait: Callable[[], float] = lambda: 0.0) -> StepFn:
    """The step of the language-modelling stages: `grad_accum` micro-batches, one update."""
    waited = [data_wait()]

    def step(index: int) -> StepOutput:
        micro = [next(batches).to(ctx.device, non_blocking=True) for _ in range(grad_accum)]
        try:
            result = train_step(model, optimizer, micro, ctx.device, ctx.amp_dtype, clip_grad)
        except torch.cuda.OutOfMemoryError as exc:  # the loop's one-line report names the shape
            shapes = ", ".join("x".join(map(str, b.input_ids.shape)) for b in micro)
            exc.batch_shape = f"{len(micro)} micro-batch{'es' if len(micro) > 1 else ''} of {shapes} tokens"
            raise
        total_waited = data_wait()  # cumulative in the prefetcher: this step's wait is the difference
        wait, waited[0] = total_waited - waited[0], total_waited
        return StepOutput(loss=result.loss, finite=result.finite, tokens=result.n_real, metrics={
            "grad_norm": result.grad_norm, "data_wait_s": wait,
            "pad_efficiency": result.n_real / max(1, result.n_padded), "tokens_real": result.n_real,
            "tokens_padded": result.n_padded, "batch_size": result.n_samples,
            "seq_len": micro[0].input_ids.shape[1]})
    return step


def _checkpoint(ctx: StageContext, parts: LoopParts, step: int, reason: str, data: dict | None = None) -> None:
    warn_low_space(ctx.monitor, parts.stage, step, ctx.paths.checkpoints(parts.stage))
    t0 = time.perf_counter()
    ckpt = save_checkpoint(ctx.paths.checkpoints(parts.stage), step, parts.model, parts.optimizer,
                           {**parts.state, "data": parts.data_state() if data is None else data,
                            "stats": ctx.monitor.stats.to_dict(),
                            "threads": torch.get_num_threads()},   # a resume sets it again (runner)
                           ctx.config.checkpoint.keep_last)
    seconds = time.perf_counter() - t0
    ctx.monitor.emit("checkpoint", parts.stage, step, path=str(ckpt.path), seconds=round(seconds, 3), reason=reason)
    ctx.monitor.log(f"checkpoint step {step} ({reason}) in {seconds:.2f}s", stage=parts.stage, event=False)


def _wait_while_paused(ctx: StageContext, parts: LoopParts, step: int) -> None:
    ctx.monitor.write_status(force=True, state="paused")
    ctx.monitor.log(f"paused at step {step}", stage=parts.stage, step=step)
    while ctx.control.paused and not ctx.control.stop_requested:
        time.sleep(0.2)
        ctx.control.poll()
        if ctx.control.checkpoint_requested:
            ctx.control.checkpoint_requested = False
            _checkpoint(ctx, parts, step, "request")
    ctx.monitor.write_status(force=True, state="running")
    ctx.monitor.log(f"resumed at step {step}", stage=parts.stage, step=step)


def _out_of_memory(ctx: StageContext, parts: LoopParts, step: int, shape: str, updating: bool,
                   data: dict | None) -> TrainingFailed:
    """After a CUDA OOM in step `step + 1`: free its memory, checkpoint the last finished step
    unless the optimizer update had started (the weights may be half updated), and say what to lower."""
    parts.optimizer.zero_grad(set_to_none=True)
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    section = next((f.name for f in fields(ctx.config) if getattr(ctx.config, f.name) is parts.optim), parts.stage)
    where = f"CUDA out of memory in step {step + 1} ({shape or 'batch shape unknown'})"
    last = latest_checkpoint(ctx.paths.checkpoints(parts.stage))
    if updating:
        kept = "no checkpoint: the optimizer update was under way; the last checkpoint is kept"
    elif active_world() is not None and active_world().size > 1:
        kept = "no checkpoint: the other ranks are inside the step (a distributed run); the last checkpoint is kept"
    elif step == parts.start_step or (last is not None and last.step == step):
        kept = f"the last finished step ({step}) is already checkpointed" if last else "no step finished yet"
    else:
        try:
            _checkpoint(ctx, parts, step, "oom", data=data)
            kept = f"checkpoint of the last finished step ({step}) written"
        except Exception as exc:  # noqa: BLE001 - the OOM is the error to report
            kept = f"no checkpoint ({type(exc).__name__})"
    ctx.monitor.alert(parts.stage, step, "out_of_memory", f"{where}; {kept}", OOM_EXPLAIN, level="error")
    return TrainingFailed(f"{where}: lower batching.max_tokens (now {ctx.config.batching.max_tokens}) and raise "
                          f"{section}.grad_accum (now {getattr(parts.optim, 'grad_accum', '?')}) to keep the "
                          f"tokens per step; {kept}")


class _UpdateWatch:
    """Whether the optimizer started an update since `reset()` (after an OOM past that point the
    weights may be half updated); always yes for an optimizer without step hooks."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        register = getattr(optimizer, "register_step_pre_hook", None)
        self._hook = register(self._on_step) if register is not None else None
        self.started = True

    def _on_step(self, *_: Any) -> None:
        self.started = True

    def reset(self) -> None:
        self.started = self._hook is None

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()


def _obey_control(ctx: StageContext, parts: LoopParts, step: int) -> str | None:
    """The viewers' commands before step `step + 1`: log them, wait while paused, checkpoint on
    request; "stop" when the run must stop now."""
    for cmd in ctx.control.poll():
        ctx.monitor.emit("control", parts.stage, step, cmd=cmd)
    if ctx.control.paused:
        _wait_while_paused(ctx, parts, step)
    if ctx.control.stop_requested:
        return "stop"
    if ctx.control.checkpoint_requested:
        ctx.control.checkpoint_requested = False
        _checkpoint(ctx, parts, step, "request")
    return None


def _count_nonfinite(ctx: StageContext, parts: LoopParts, step: int, finite: bool, bad_in_row: int) -> int:
    """Non-finite steps in a row after step `step`: each is an alert (its update was skipped), and
    `max_bad_steps` of them in a row fail the run."""
    if finite:
        return 0
    bad_in_row += 1
    parts.state["skipped_steps"] += 1
    ctx.monitor.alert(parts.stage, step, "nonfinite_loss",
                      f"non-finite loss/grad at step {step} ({bad_in_row} in a row); update skipped", NONFINITE_EXPLAIN)
    if bad_in_row >= parts.optim.max_bad_steps:
        raise TrainingFailed(f"loss was non-finite for {bad_in_row} steps in a row (step {step}); "
                             f"stopped, the last good checkpoint is kept")
    return bad_in_row


def run_loop(ctx: StageContext, parts: LoopParts) -> str:
    """Train from `parts.start_step` to `parts.optim.steps`; returns `finished` or `stopped`."""
    watch = _UpdateWatch(parts.optimizer)
    try:
        return _train(ctx, parts, watch)
    finally:
        watch.remove()


def _train(ctx: StageContext, parts: LoopParts, watch: _UpdateWatch) -> str:
    cfg, mon, stage, opt = ctx.config, ctx.monitor, parts.stage, parts.optim
    total = opt.steps
    parts.state.setdefault("skipped_steps", 0)
    bad_in_row, step_time_ema, last_system = 0, None, 0.0
    step = parts.start_step
    peak = device_peak(ctx.device, cfg.monitor.peak_tflops)
    if parts.flops_per_token:
        mon.log(describe_mfu(parts.flops_per_token, peak), stage=stage)
    while step < total:
        if _obey_control(ctx, parts, step) == "stop":
            _checkpoint(ctx, parts, step, "stop")
            return "stopped"

        t0 = time.perf_counter()
        lr = lr_at(step, opt.lr, total, opt.warmup_steps, opt.schedule, opt.min_lr_ratio)
        set_lr(parts.optimizer, lr)
        data_before, oom = parts.data_state(), None
        watch.reset()
        try:
            out = parts.step(step)
        except torch.cuda.OutOfMemoryError as exc:
            oom = getattr(exc, "batch_shape", "")
        if oom is not None:  # outside the except block, so the failed step's tensors are freed
            raise _out_of_memory(ctx, parts, step, oom, watch.started, data_before)
        step += 1

        bad_in_row = _count_nonfinite(ctx, parts, step, out.finite, bad_in_row)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        dt = time.perf_counter() - t0
        if opt.max_seconds and active_world() is not None:
            dt = active_world().max([dt])[0]   # the slowest rank's: every rank reaches the limit at the same step
        step_time_ema = dt if step_time_ema is None else 0.9 * step_time_ema + 0.1 * dt
        parts.state["trained_s"] = parts.state.get("trained_s", 0.0) + dt
        if opt.max_seconds and parts.state["trained_s"] >= opt.max_seconds and step < total:
            mon.log(f"time limit: {opt.max_seconds:g}s of training reached at step {step}/{total}", stage=stage, step=step)
            total = step
        if step % cfg.monitor.log_every == 0 or step == total:
            mon.metrics(stage, step, total, {
                "loss": out.loss, "lr": lr, **out.metrics,
                "tokens_per_s": out.tokens / dt, "step_time_s": dt,
                **throughput_metrics(parts.flops_per_token, out.tokens / dt, peak),
                "skipped_steps": parts.state["skipped_steps"],
                **{k: v for source in parts.metric_sources for k, v in source().items()},
            }, eta_s=step_time_ema * (total - step))
        for hook in parts.step_hooks:
            hook(step)
        if ctx.system is not None and time.monotonic() - last_system >= cfg.monitor.system_every_s:
            last_system = time.monotonic()
            mon.system(stage, step, ctx.system.latest())
        every = cfg.eval.every if parts.eval_every is None else parts.eval_every
        if (every and step % every == 0) and step < total:
            metrics = parts.evaluate(step)
            mon.eval(stage, step, metrics)
            reason = parts.stop_when(metrics) if parts.stop_when else None
            if reason:
                mon.log(f"{reason}: the stage ends at step {step}/{total}", stage=stage, step=step)
                total = step
        # No periodic checkpoint inside a streak of skipped steps: the last one stays the last good one.
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < total and bad_in_row == 0:
            _checkpoint(ctx, parts, step, "periodic")
    mon.eval(stage, step, parts.evaluate(step))
    _checkpoint(ctx, parts, step, "final")
    parts.end_step = step
    return "finished"
