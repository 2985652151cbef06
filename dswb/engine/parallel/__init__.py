"""Scale-out: spreading one model over several devices.

- `shapes`: a model's modules and their exact parameter counts from a config alone (no weights).
- `memory`: bytes per module by kind (weights, gradients, optimizer state, compute copies,
  activations) and FLOPs per token, as pure formulas.
- `planner`: places the modules on devices in order, never splitting a decoder block.
- `report`: the plan as rows and plain text.
- `devices`, `layer_map`, `roles`: execution (torch) - modules moved to their devices, hidden states
  moved at the boundaries, and several models (policy, reference, value, reward) placed together.

Several processes (torchrun; `[parallel] mode = "ddp" | "fsdp" | "pipeline"`, docs/parallel.md):
- `distributed`: the world (rank, size, device, backend), its collectives, failures and shutdown;
  pure functions for rank shares, metric reduction and data positions across world sizes.
- `wrap`: a trained model made DDP / FSDP2 in place (`prepare_model` calls it); `pipeline`: a
  rank's stage with `torch.distributed.pipelining`, its step and evaluation.
- `sharding`: which data each rank reads; `rl`: global normalisers for PPO and GRPO updates.
- `ranks`: rank 0 writes the run directory, the ranks agree (metrics, eval, control).
- `dist_checkpoint`: DCP checkpoints under the manifest contract, final models gathered on rank 0.

`shapes`, `memory`, `planner` and `report` are pure Python: `dswb plan` imports no torch.
"""
