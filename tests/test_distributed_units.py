"""The distributed pieces that need no second process: rank shares, metric reduction, data positions
across world sizes, the launch command, config and CLI errors, the launcher's record of a lost run,
and a world of one process."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from dswb.config import load_config
from dswb.engine.distributed.world import rank_share, reduce_metrics, reshard_consumed
from dswb.errors import UserError


@pytest.mark.parametrize("n,size", [(10, 3), (4, 4), (3, 5), (0, 2), (17, 1)])
def test_rank_shares_cover_the_items_in_order(n, size):
    blocks = [rank_share(n, r, size) for r in range(size)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    sizes = [hi - lo for lo, hi in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_rank_share_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError):
        rank_share(4, 2, 2)


def test_metrics_reduce_by_kind():
    a = {"loss": 2.0, "tokens_per_s": 100.0, "tokens_real": 30, "tokens_padded": 40, "step_time_s": 0.5,
         "timing/generation_s": 1.0, "completions/min_length": 3.0, "entropy": 1.0, "tflops": 1.0}
    b = {"loss": 2.0, "tokens_per_s": 300.0, "tokens_real": 10, "tokens_padded": 40, "step_time_s": 0.7,
         "timing/generation_s": 0.5, "completions/min_length": 2.0, "entropy": 3.0, "tflops": 2.0, "fp8/amax": 4.0}
    out = reduce_metrics([a, b])
    assert out["loss"] == 2.0 and out["entropy"] == 2.0 and out["fp8/amax"] == 4.0
    assert out["tokens_per_s"] == 400.0 and out["tokens_real"] == 40 and out["tflops"] == 3.0
    assert out["step_time_s"] == 0.7 and out["timing/generation_s"] == 1.0 and out["completions/min_length"] == 2.0
    assert out["pad_efficiency"] == 0.5
    pipeline = reduce_metrics([a, b], same_data=True)   # every rank saw the same tokens
    assert pipeline["tokens_per_s"] == 200.0 and pipeline["tflops"] == 3.0


@pytest.mark.parametrize("consumed,old,new,expected", [(6, 2, 1, (12, 0)), (3, 1, 2, (2, 1)), (4, 2, 4, (2, 0)),
                                                       (5, 3, 2, (8, 1))])
def test_reshard_consumed(consumed, old, new, expected):
    per_rank, skipped = reshard_consumed(consumed, old, new)
    assert (per_rank, skipped) == expected
    assert per_rank * new - skipped == consumed * old and 0 <= skipped < new


def _stream(world_size=1, rank=0, batches_per_step=1):
    from dswb.engine.data.batches.loader import BatchStream

    cfg = load_config(None, ["batching.max_tokens=64", "model.max_seq_len=16"]).batching
    lengths = np.random.default_rng(0).integers(3, 16, 90)
    samples = [list(range(1, int(n) + 1)) for n in lengths]
    return BatchStream(samples, cfg, pad_id=0, max_len=16, seed=3, rank=rank, world_size=world_size,
                       batches_per_step=batches_per_step)


def _positions(stream, n):
    out = []
    for _ in range(n):
        batch = next(stream)
        out.append((batch.epoch, batch.index))
    return out


def test_a_two_rank_data_position_resumes_on_one_rank_and_back():
    from dswb.engine.distributed.sharding import load_stream_state

    one = _stream()
    everything = _positions(one, 40)        # one rank's batches, across an epoch boundary
    ranks = [_stream(2, r) for r in range(2)]
    taken = [_positions(s, 7) for s in ranks]
    assert [p for pair in zip(*taken) for p in pair] == everything[:14]
    state = ranks[0].state_dict()
    single = _stream()
    assert load_stream_state(single, state) == "data position of 2 ranks resumed on 1"
    assert _positions(single, 10) == everything[14:24]
    # and back to two ranks, from an odd position: one batch is skipped to keep the ranks aligned
    odd = _stream()
    _positions(odd, 3)
    again = [_stream(2, r) for r in range(2)]
    notes = [load_stream_state(s, odd.state_dict()) for s in again]
    assert notes[0] == "data position of 1 rank resumed on 2 (1 batch skipped to keep the ranks aligned)"
    assert [p for pair in zip(*[_positions(s, 3) for s in again]) for p in pair] == everything[4:10]


def test_ranked_pairs_share_one_stream_and_its_position():
    from dswb.engine.data.batches.pairs import PairStream
    from dswb.engine.distributed.sharding import RankedPairs

    plain = PairStream(20, 3, seed=1)
    expected = [next(plain) for _ in range(8)]
    ranks = [RankedPairs(PairStream(20, 3, seed=1), r, 2) for r in range(2)]
    got = [[next(s) for _ in range(4)] for s in ranks]
    assert [b for pair in zip(*got) for b in pair] == expected
    assert ranks[0].state_dict() == ranks[1].state_dict() == plain.state_dict()


def test_skipped_rows_draw_what_one_process_draws():
    from dswb.engine.distributed.sharding import skip_rows
    from dswb.engine.rl.rollout import draw_uniforms

    whole = draw_uniforms(24, 6, torch.Generator().manual_seed(9), "cpu")
    generator = torch.Generator().manual_seed(9)
    skip_rows(generator, 16, 6)
    assert torch.equal(draw_uniforms(8, 6, generator, "cpu"), whole[16:])


def test_launch_commands():
    from dswb.launch import Launch

    one_node = Launch(nproc=4).torchrun(["demo", "--plain"])
    assert one_node[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone",
                            "-m", "dswb", "run", "demo", "--plain"]
    two = Launch(nproc=8, nnodes=2, node_rank=1, rdzv_endpoint="node0:29500")
    assert two.torchrun(["demo"])[3:11] == ["--nproc-per-node", "8", "--nnodes", "2", "--node-rank", "1",
                                            "--rdzv-endpoint", "node0:29500"]
    assert two.dswb_args() == ["--nproc", "8", "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "node0:29500"]


@pytest.mark.parametrize("overrides,needle", [
    (["parallel.mode=ddp", 'parallel.devices=["cpu"]'], "parallel.devices: with mode = 'ddp' each process uses its own device"),
    (["parallel.mode=fsdp", 'parallel.reference_devices=["cpu"]'], "leave parallel.devices = [\"auto\"]"),
    (["parallel.mode=pipeline", 'run.stages=["sft","rm"]'], "parallel.mode = 'pipeline' runs the pretrain and sft stages"),
    (["parallel.mode=fsdp", 'run.stages=["grpo"]', 'grpo.rewards=["exact_match"]'], "the grpo stage runs under ddp only"),
    (["parallel.mode=pipeline", "fp8.enabled=true"], "fp8.enabled with parallel.mode = 'pipeline' is not supported"),
    (["parallel.mode=fsdp", "train.compile=true"], "train.compile with parallel.mode = 'fsdp' is not supported"),
    (["parallel.mode=fsdp", "run.device=cpu", "parallel.fsdp_cpu_offload=true"],
     "parallel.fsdp_cpu_offload moves FSDP2's GPU shards to CPU memory: it needs parallel.mode = 'fsdp' on GPUs"),
    (["parallel.timeout_s=1"], "parallel.timeout_s"),
    (["parallel.microbatches=0"], "parallel.microbatches"),
    (["parallel.pipeline_schedule=zb"], "parallel.pipeline_schedule: 'zb' is not one of 1f1b, gpipe"),
    (["parallel.fsdp_precision=fp16"], "parallel.fsdp_precision: 'fp16' is not one of auto, bf16, fp32"),
])
def test_distributed_config_errors(overrides, needle):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_layers_mode_cannot_run_under_torchrun(monkeypatch):
    from dswb.engine.distributed.world import ensure_world

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="parallel.mode = 'layers' spreads one model over the devices of ONE process"):
        ensure_world(load_config(None, ["parallel.mode=layers", 'parallel.devices=["cpu","cpu"]']))


@pytest.mark.parametrize("args,needle", [
    (["--nproc", "2", "--nnodes", "2"], "--nnodes > 1: give --run-dir"),
    (["--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--run-dir", "x"], "--node-rank 2: must be below --nnodes (2)"),
])
def test_launch_option_errors(args, needle, tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "dswb", "run", "--runs-root", str(tmp_path), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and needle in result.stderr
    assert result.stderr.count("\n") == 1 and not list(tmp_path.iterdir())   # nothing started


def test_the_launcher_records_a_run_whose_processes_vanished(tmp_path):
    from dswb.launch import record_unfinished
    from dswb.rundir import create_run_dir, read_status
    from dswb.rundir.status import new_status, write_status

    paths = create_run_dir(tmp_path / "run")
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    write_status(paths.status, {**new_status("pretrain", 10), "state": "running", "pid": dead, "step": 4})
    assert record_unfinished(paths, -9)
    status = read_status(paths.status)
    assert status["state"] == "failed" and "signal 9 from torchrun" in status["error"]
    end = json.loads(paths.events.read_text().splitlines()[-1])
    assert end["kind"] == "run_end" and end["state"] == "failed" and end["step"] == 4
    assert not record_unfinished(paths, 1)   # an ended run is left as it is


def test_a_world_of_one_process(tmp_path):
    import torch.distributed as dist

    from dswb.engine.distributed.world import active, end_world, ensure_world
    from dswb.engine.rl.global_batch import micro_plan, split_minibatches
    from dswb.engine.rl.update import chunks

    assert ensure_world(load_config(None)) is None and active() is None
    world = ensure_world(load_config(None, ["parallel.mode=ddp", "run.device=cpu"]))
    try:
        assert world.size == 1 and world.created_here and dist.is_initialized()
        assert world.sum([1.5, 2]) == [1.5, 2.0] and world.broadcast({"a": 1}) == {"a": 1}
        assert world.main_first(lambda: 7) == 7
        rows = list(range(10))
        assert split_minibatches(rows, 3) == chunks(rows, 3) and split_minibatches([], 3) == []
        assert micro_plan([[1], [2]]) == [[1], [2]]
    finally:
        end_world()
    assert active() is None and not dist.is_initialized()
