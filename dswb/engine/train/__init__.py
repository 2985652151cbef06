"""Training, shared by every stage.

- `loop`: `run_loop`, the loop every stage runs (control, lr, step, metrics, eval, checkpoints).
- `step`: one LM optimizer step over micro-batches, and `guarded_update`, the one clip /
  finite-check / step / zero-grad sequence every stage and the pipeline schedule use.
- `losses`: the token loss as a pure function; `optim`, `schedule`: the optimizer and lr schedule.
- `prepare`: `prepare_model`, the one hook that turns a loaded model into the trained one
  (placement, FP8, distribution, compile, and the transforms a stage adds).
"""
