"""Checkpoints and final models on disk (see docs/faults.md).

- `layout`: the checkpoint directory contract (manifest last, atomic rename, verification,
  selection, quarantine, RNG state, space checks), shared by both writers.
- `local`: one process writes and reads `model.safetensors` + `optimizer.pt`.
- `dcp`: a torchrun run writes and reads `torch.distributed.checkpoint` shards.
- `io`: `save_checkpoint` / `load_checkpoint`, which pick one of the two.
- `final`: `final/<stage>/`, a plain Hugging Face model directory (gathered on rank 0 when sharded).
"""
