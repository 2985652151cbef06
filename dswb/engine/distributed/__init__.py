"""Several processes under torchrun (`[parallel] mode = "ddp" | "fsdp" | "pipeline"`, docs/parallel.md).

- `world`: the world (rank, size, device, backend), its collectives, failures and shutdown; pure
  functions for rank shares, metric reduction and data positions across world sizes.
- `wrap`: a trained model made DDP / FSDP2 in place (`prepare_model` calls it).
- `pipeline`: a rank's stage with `torch.distributed.pipelining` and its schedules.
- `sharding`: which data each rank reads.
- `ranks`: rank 0 writes the run directory, the ranks agree (metrics, eval, control).
"""
