"""What every stage shares: where it starts, how it announces itself, resumes and finishes.

- `resolve_init`: the model a stage starts from (its `init`, else the latest language model of
  this run, else `model.path`), as a directory.
- `describe_model` / `begin_stage`: the `stage_start` event (model and data) and the running status.
- `resume` / `resume_stream`: the newest verified checkpoint of the stage, restored into model and
  optimizer (and the batch stream's position); `batching_event`: the length histogram event.
- `run_stage_loop`: `run_loop` with what the prepared model adds (every stage); `run_lm_loop`: the
  same over a prefetched batch stream (pretraining, SFT).
- `finish_lm`: held-out test score, the final model directory, the stage's lm-eval `eval_tasks`
  (`run_stage_tasks`), the `stage_end` event.
- `TaskData`: the built-in task's splits and its evaluation helpers; `load_pairs`: the preference pairs
  of the reward model and DPO.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dswb.config.schema import LM_STAGES, STAGES
from dswb.engine.adapters.lora import parameter_counts
from dswb.engine.checkpoint.final import is_complete, save_final_model
from dswb.engine.checkpoint.io import load_checkpoint
from dswb.engine.checkpoint.layout import latest_checkpoint, remove_partial
from dswb.engine.context import StageContext
from dswb.engine.data.batches.batching import length_histogram
from dswb.engine.data.batches.loader import Prefetcher
from dswb.engine.data.batches.pairs import EncodedPair, encode_pair
from dswb.engine.data.records.chat import install_chat_template
from dswb.engine.data.records.posttrain import read_preferences, split_records, task_preferences
from dswb.engine.data.records.task import AdditionTask, TaskSplits, task_seed
from dswb.engine.distributed.sharding import load_stream_state
from dswb.engine.eval import harness
from dswb.engine.model.load import is_model_dir, stage_info
from dswb.engine.train.loop import LoopParts, StepFn, lm_step, run_loop
from dswb.engine.train.prepare import model_hooks
from dswb.errors import UserError
from dswb.stats import StatsBook


@dataclass
class StageStart:
    path: Path
    prompt_format: str      # "plain" or "chat" (how the model reads prompts)
    info: dict              # the starting model's dswb_stage.json (empty for a foreign model)


def _model_dir(path: Path, where: str) -> Path:
    if not is_model_dir(path):
        raise UserError(f"{where}: {path} is not a model directory (no config.json) or an adapter directory "
                        f"(no adapter_config.json)")
    return path


def resolve_init(ctx: StageContext, stage: str, spec: str, where: str, *, required: bool = True) -> StageStart | None:
    """The directory a stage starts from (see `INIT_DOC` in dswb/config/posttrain.py)."""
    path: Path | None = None
    if spec in STAGES:
        path = ctx.finals.get(spec) or ctx.paths.final(spec)
        if not is_complete(path):
            raise UserError(f"{where}: this run has no finished '{spec}' stage ({path} is missing)")
    elif ":" in spec and not Path(spec).expanduser().exists():
        run_ref, _, other_stage = spec.rpartition(":")
        from dswb.rundir.layout import resolve_run
        other = resolve_run(run_ref, ctx.paths.root.parent)
        path = other.final(other_stage)
        if not is_complete(path):
            raise UserError(f"{where}: run {other.run_id} has no finished '{other_stage}' stage")
    elif spec:
        path = _model_dir(Path(spec).expanduser(), where)
    else:
        lm = [s for s in ctx.finals if s in LM_STAGES]
        if lm:
            path = ctx.finals[lm[-1]]
        elif ctx.config.model.path:
            path = _model_dir(Path(ctx.config.model.path).expanduser(), "model.path")
    if path is None:
        if required:
            raise UserError(f"{where}: nothing to start {stage} from: run an earlier stage in this run, "
                            f"set model.path, or set {stage}.init to a model directory or RUN:stage")
        return None
    info = stage_info(path)
    return StageStart(path=path, prompt_format=info.get("prompt_format", "plain"), info=info)


def resume(ctx: StageContext, stage: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           adapters: Any = None) -> tuple[int, dict]:
    """(start step, trainer state) from the newest checkpoint of `stage` when resuming, else (0, {}).
    With `adapters` (a `StageAdapters`) the checkpoint holds only the adapters, and must have been
    trained on the same base; every later checkpoint records that base."""
    start, state = _resume(ctx, stage, model, optimizer)
    if adapters is not None:
        if start:
            adapters.check_resume(state, f"{ctx.paths.checkpoints(stage)}")
        state["adapter"] = adapters.checkpoint_state()
    return start, state


def _resume(ctx: StageContext, stage: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    ckpt_dir = ctx.paths.checkpoints(stage)
    if remove_partial(ckpt_dir):
        ctx.monitor.log("removed an incomplete checkpoint left by an interrupted write", stage=stage)
    ckpt = latest_checkpoint(ckpt_dir) if ctx.resume else None
    if ckpt is None:
        return 0, {}
    state = load_checkpoint(ckpt, model, optimizer, ctx.device)
    start = state.pop("step")
    ctx.monitor.stats = StatsBook.from_dict(state.pop("stats"))
    ctx.monitor.log(f"resumed from {ckpt.path.name}", stage=stage, step=start)
    return start, state


def describe_model(model: torch.nn.Module, vocab: int, source: str, **extra: Any) -> dict:
    """The `model` field of a `stage_start` event."""
    config = model.config
    trainable, total = parameter_counts(model)
    return {"params": total, "trainable": trainable, "layers": getattr(config, "num_hidden_layers", 0),
            "hidden": getattr(config, "hidden_size", 0), "vocab": vocab, "source": source, **extra}


def begin_stage(ctx: StageContext, stage: str, start_step: int, total_steps: int, model: dict, data: dict) -> None:
    """The `stage_start` event (what trains, on what) and the status that says the stage runs."""
    ctx.monitor.emit("stage_start", stage, start_step, total_steps=total_steps, model=model, data=data)
    ctx.monitor.write_status(force=True, state="running", stage=stage, step=start_step, total_steps=total_steps)


def resume_stream(ctx: StageContext, stage: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  stream: Any, adapters: Any = None) -> tuple[int, dict]:
    """`resume`, with the batch stream moved to the checkpoint's data position."""
    start_step, state = resume(ctx, stage, model, optimizer, adapters)
    if "data" in state:
        note = load_stream_state(stream, state.pop("data"))
        if note:
            ctx.monitor.log(note, stage=stage)
    return start_step, state


def batching_event(ctx: StageContext, stage: str, step: int, lengths, stream: Any) -> None:
    """The `batching` event: the length histogram of the training samples and the stream's counters."""
    lengths = np.asarray(lengths)
    n = len(lengths)
    ctx.monitor.emit("batching", stage, step, hist=length_histogram(lengths),
                     metrics={"samples": n, "mean_len": float(lengths.sum()) / max(1, n),
                              "max_len": int(lengths.max()) if n else 0, **stream.counters,
                              "max_tokens": ctx.config.batching.max_tokens})


def run_stage_loop(ctx: StageContext, stage: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   step: StepFn, section: Any, *, start_step: int, state: dict, evaluate: Callable[[int], dict],
                   data_state: Callable[[], dict] = dict, hooks_of: torch.nn.Module | None = None,
                   probe: Callable[[], float] | None = None, context: float | None = None,
                   eval_every: int | None = None,
                   stop_when: Callable[[dict], str | None] | None = None) -> tuple[str, int | None]:
    """`run_loop` over `step` with what the prepared model adds (`model_hooks` of `hooks_of`, by
    default `model`, the module the optimizer trains): (outcome, last step)."""
    hooks = model_hooks(hooks_of if hooks_of is not None else model, ctx, stage, probe=probe, context=context)
    parts = LoopParts(stage=stage, model=model, optimizer=optimizer, step=step, data_state=data_state,
                      evaluate=evaluate, optim=section, start_step=start_step, state=state, eval_every=eval_every,
                      stop_when=stop_when, metric_sources=hooks.metric_sources, step_hooks=hooks.step_hooks,
                      flops_per_token=hooks.flops_per_token)
    return run_loop(ctx, parts), parts.end_step


def run_lm_loop(ctx: StageContext, stage: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                stream: Any, section: Any, *, start_step: int, state: dict, evaluate: Callable[[int], dict],
                probe: Callable[[], float] | None, context: float, eval_every: int | None = None,
                stop_when: Callable[[dict], str | None] | None = None) -> tuple[str, int | None]:
    """The loop of a language-modelling stage over `stream` (prefetched): (outcome, last step)."""
    prefetch = Prefetcher(stream, depth=ctx.config.batching.prefetch, pin=ctx.device.type == "cuda")
    step = lm_step(model, optimizer, iter(prefetch), ctx, section.grad_accum, section.clip_grad,
                   data_wait=lambda: prefetch.wait_s)
    try:
        return run_stage_loop(ctx, stage, model, optimizer, step, section, start_step=start_step, state=state,
                              evaluate=evaluate, data_state=prefetch.state_dict, probe=probe, context=context,
                              eval_every=eval_every, stop_when=stop_when)
    finally:
        prefetch.close()


def eval_every(ctx: StageContext, section: Any) -> int:
    return ctx.config.eval.every if section.eval_every < 0 else section.eval_every


def accuracy_target(section: Any):
    """`LoopParts.stop_when` for `stop_at_task_acc`: a reason once an evaluation reaches the target."""
    target = getattr(section, "stop_at_task_acc", 0.0)
    if not target:
        return None

    def reached(metrics: dict) -> str | None:
        acc = metrics.get("task_acc")
        return f"task_acc {acc:.3f} reached stop_at_task_acc {target:g}" if isinstance(acc, float) and acc >= target else None
    return reached


@dataclass
class TaskData:
    """The built-in task for post-training: its splits, and the prompts to score."""

    task: AdditionTask
    splits: TaskSplits

    @classmethod
    def from_config(cls, config: Any) -> "TaskData":
        task = AdditionTask(config.task.digits, task_seed(config), config.task.think)
        return cls(task, task.split(config.task.n_train, config.task.n_val, config.task.n_test))

    def val(self, n: int) -> tuple[list[str], list[str]]:
        return [e.prompt for e in self.splits.val[:n]], [e.answer for e in self.splits.val[:n]]

    def test(self) -> tuple[list[str], list[str]]:
        return [e.prompt for e in self.splits.test], [e.answer for e in self.splits.test]


def finish_lm(ctx: StageContext, stage: str, model: torch.nn.Module, tokenizer: Any, steps: int,
              prompt_format: str, test_score: Callable[[], dict] | None, extra: dict | None = None) -> str:
    """Score the finished model on held-out data, write `final/<stage>/`, emit `stage_end`."""
    mon = ctx.monitor
    if test_score is not None:
        t0 = time.perf_counter()
        scores = test_score()
        if scores:
            mon.eval(stage, steps, scores)
            mon.log("held-out test: " + " ".join(f"{k}={v:.4f}" for k, v in scores.items())
                    + f" ({time.perf_counter() - t0:.1f}s)", stage=stage, step=steps)
    final = save_final_model(ctx.paths.final(stage), model, tokenizer,
                       {"stage": stage, "step": steps, "run_id": ctx.paths.run_id, "prompt_format": prompt_format,
                        "task": task_info(ctx.config), "last_eval": mon.status.get("last_eval", {}), **(extra or {})})
    if harness.stage_tasks(ctx.config, stage):
        run_stage_tasks(ctx, stage, final, steps)
    mon.emit("stage_end", stage, steps, state="finished", final_path=str(final))
    return "finished"


def run_stage_tasks(ctx: StageContext, stage: str, final: Path, steps: int) -> None:
    """The stage's `eval_tasks` (lm-eval) on its final model: an `eval` event (`lm_eval/<task>/<metric>`) and
    a log line. The model is already saved: a failure here is an error line, and the stage still finishes."""
    mon, names = ctx.monitor, harness.stage_tasks(ctx.config, stage)
    mon.log(f"lm-eval: {', '.join(names)} on {final}", stage=stage, step=steps)
    try:
        results = harness.run_tasks(final, names, device=str(ctx.device), **harness.eval_settings(ctx.config),
                                    where=f"{harness.stage_key(stage)}.eval_tasks")
    except Exception as exc:  # noqa: BLE001 - the trained model is safe; report and go on
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        mon.log(f"lm-eval failed: {first} (run `dswb eval {ctx.paths.run_id}:{stage} --tasks ...` to retry)",
                level="error", stage=stage, step=steps)
        return
    metrics = harness.flatten(results)
    mon.eval(stage, steps, metrics, source=harness.event_source(results))
    mon.log("lm-eval: " + " ".join(f"{k[len(harness.PREFIX) + 1:]}={v:.4f}" for k, v in metrics.items())
            + f" ({results['seconds']:.1f}s)", stage=stage, step=steps)


def load_pairs(ctx: StageContext, section, stage: str, tokenizer) -> tuple[list[EncodedPair], list[EncodedPair],
                                                                         list[EncodedPair], bool]:
    """(train, val, test, is_chat) encoded pairs: the built-in task's splits, or `data` files split by
    `val_fraction` (no test split)."""
    cfg = ctx.config
    if cfg.data.source == "task" and not section.data:
        td = TaskData.from_config(cfg)
        make = lambda examples, salt: task_preferences(td.task, examples, section.near_fraction, cfg.run.seed + salt)  # noqa: E731
        records = make(td.splits.train, 0), make(td.splits.val, 1), make(td.splits.test, 2)
    else:
        train, val = split_records(read_preferences(section.data, f"{stage}.data"), section.val_fraction, cfg.run.seed)
        records = train, val, []
    if section.max_records:
        records = (records[0][:section.max_records], *records[1:])
    is_chat = bool(records[0]) and records[0][0].is_chat
    if is_chat and install_chat_template(tokenizer, "auto"):
        ctx.monitor.log(f"added chat tokens; vocabulary now {len(tokenizer)}", stage=stage)
    train, val, test = ([encode_pair(tokenizer, r) for r in part] for part in records)
    return train, val, test, is_chat


def task_info(config: Any) -> dict | None:
    if config.data.source != "task":
        return None
    t = config.task
    return {"kind": t.kind, "digits": t.digits, "n_train": t.n_train, "n_val": t.n_val, "n_test": t.n_test,
            "seed": task_seed(config), "think": t.think}
