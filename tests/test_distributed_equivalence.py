"""Two processes train what one process trains (gloo on the CPU, torchrun, real tiny models).

One torchrun launch of this file (2 processes) runs six real runs in a row: pretraining under DDP,
FSDP2 and a 2-stage pipeline, pretraining a Mixture-of-Experts model with aux-free balancing under DDP,
and SFT then GRPO under DDP, in full and on LoRA adapters. Against one process on the same global
batch (grad_accum doubled where each rank takes its own batches): the same loss trajectory and
final weights (float tolerance). Then the FSDP2 checkpoint of step 2 resumes on one process and
finishes exactly as the two processes did.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_in_process, tiny_config

COMMON = ["run.device=cpu", "train.steps=4", "checkpoint.every=2", "eval.task_samples=4", "monitor.log_every=1"]
RL = ['run.stages=["sft","grpo"]', "sft.steps=2", "sft.warmup_steps=1", "grpo.steps=3", "grpo.prompts_per_step=4",
      "grpo.group_size=4", "grpo.max_new_tokens=4", "grpo.lr=1e-3", "grpo.temperature=1.0"]
REWARD = '''def digits(completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / 4.0 for c in completions]
'''
MOE = ["model.size=moe-tiny", "moe.balance=aux_free", "moe.bias_update_speed=0.01", "moe.stats_every=2"]
# name -> overrides of the 2-process runs (per-rank batches: grad_accum as in one process / 2)
RUNS = {
    "ddp": ["parallel.mode=ddp"],
    "fsdp": ["parallel.mode=fsdp"],
    "pipeline": ["parallel.mode=pipeline", "train.grad_accum=2", "parallel.microbatches=2"],  # every rank: all batches
    "moe": ["parallel.mode=ddp", *MOE],
    "grpo": ["parallel.mode=ddp", "sft.grad_accum=4"],
    "lora-grpo": ["parallel.mode=ddp", "sft.grad_accum=4", "lora.enabled=true", "lora.r=4", "grpo.beta=0.04"],
}
LORA = ["lora.enabled=true", "lora.r=4", "grpo.beta=0.04"]   # SFT from random weights trains in full, GRPO on adapters
TIMEOUT = 240


def rl_overrides(root: Path) -> list[str]:
    return RL + [f'grpo.rewards=["{root / "reward.py"}:digits"]']


def metrics(run_dir: Path, stage: str | None = None) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["kind"] == "metrics" and (stage is None or e["stage"] == stage)]


def same(a: list[float], b: list[float], rel: float = 2e-5) -> bool:
    return len(a) == len(b) and all(x == pytest.approx(y, rel=rel, abs=1e-7) for x, y in zip(a, b))


def final_weights(run_dir: Path, stage: str = "pretrain") -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / stage / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One-process references (in this process) and the 2-process runs (one torchrun launch)."""
    root = tmp_path_factory.mktemp("dist")
    (root / "reward.py").write_text(REWARD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           __file__, str(root)]
    launched = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # (in a directory of their own: their data cache is not the 2-process runs')
        assert run_in_process(tiny_config(*COMMON, "train.grad_accum=2"), root / "ref" / "one") == 0
        assert run_in_process(tiny_config(*COMMON, "train.grad_accum=2", *MOE), root / "ref" / "one-moe") == 0
        assert run_in_process(tiny_config(*COMMON, *rl_overrides(root), "sft.grad_accum=8"), root / "ref" / "one-grpo") == 0
        assert run_in_process(tiny_config(*COMMON, *rl_overrides(root), "sft.grad_accum=8", *LORA),
                              root / "ref" / "one-lora-grpo") == 0
        out, _ = launched.communicate(timeout=TIMEOUT)
    finally:
        if launched.poll() is None:
            launched.kill()
    assert launched.returncode == 0, out[-3000:]
    return root


def test_ddp_two_processes_match_one_process(runs):
    one, ddp = metrics(runs / "ref" / "one"), metrics(runs / "ddp")
    assert [m["step"] for m in ddp] == [1, 2, 3, 4]
    assert same([m["metrics"]["loss"] for m in ddp], [m["metrics"]["loss"] for m in one])
    assert same([m["metrics"]["grad_norm"] for m in ddp], [m["metrics"]["grad_norm"] for m in one])
    # the ranks' tokens add up to the one process's tokens of the same global batch
    assert [m["metrics"]["tokens_real"] for m in ddp] == [m["metrics"]["tokens_real"] for m in one]
    a, b = final_weights(runs / "ref" / "one"), final_weights(runs / "ddp")
    assert sorted(a) == sorted(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_moe_balancing_under_ddp_sums_the_ranks_loads(runs):
    """Each rank routes its own batches; the loads in the `moe` events and the bias updates are the
    ranks' sums, so both equal one process's on the same global batch."""
    one, ddp = runs / "ref" / "one-moe", runs / "moe"
    assert same([m["metrics"]["loss"] for m in metrics(ddp)], [m["metrics"]["loss"] for m in metrics(one)])

    def loads(run_dir):
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        return [[(x["tokens"], x["load"], x["bias"]) for x in e["layers"]] for e in events if e["kind"] == "moe"]
    assert len(loads(ddp)) == 2 and loads(ddp) == loads(one)
    a, b = final_weights(one), final_weights(ddp)
    bias = "model.layers.1.mlp.gate.e_score_correction_bias"
    assert float(a[bias].abs().max()) > 0 and (a[bias] == b[bias]).all()
    assert sorted(a) == sorted(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_run_directory_of_a_two_process_run(runs):
    from dswb.rundir import read_status

    ddp = runs / "ddp"
    status = read_status(ddp / "status.json")
    assert status["state"] == "finished" and status["world_size"] == 2 and status["parallel_mode"] == "ddp"
    assert [r["rank"] for r in status["ranks"]] == [0, 1] and all(r["device"] == "cpu" for r in status["ranks"])
    events = [json.loads(line) for line in (ddp / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["kind"] == "run_start")
    assert start["world_size"] == 2 and len(start["ranks"]) == 2
    system = [e for e in events if e["kind"] == "system"]
    assert system and all([r["rank"] for r in e["ranks"]] == [0, 1] for e in system)
    assert (ddp / "train.rank-1.log").read_text().count("distributed: ddp over 2 processes") == 1
    assert not (ddp / "train.rank-0.log").exists()
    # the checkpoint is DCP, with the manifest listing every rank's shard
    manifest = json.loads((ddp / "checkpoints" / "pretrain" / "step-4" / "dswb_manifest.json").read_text())
    assert {"dcp/__0_0.distcp", "dcp/__1_0.distcp", "dcp/.metadata", "trainer_state.json"} <= set(manifest["files"])


def test_viewers_show_the_world_of_a_two_process_run(runs):
    """The dashboard's model and `dswb runs show` read the world size and every rank from the real run."""
    from typer.testing import CliRunner

    from dswb.cli.app import app
    from dswb.rundir import RunPaths, read_events
    from dswb.tui.model import RunModel
    from dswb.tui.widgets.system_panel import render_ranks

    model = RunModel(RunPaths(runs / "ddp"))
    model.ingest(read_events(runs / "ddp" / "events.jsonl"))
    assert model.world_text() == "2 x ddp"
    assert [r["rank"] for r in model.ranks] == [0, 1] and all(r["device"] == "cpu" for r in model.ranks)
    assert all("rss_mb" in r for r in model.ranks)   # each rank's own latest sample
    assert render_ranks(model.ranks).row_count == 2
    shown = CliRunner().invoke(app, ["runs", "show", str(runs / "ddp")])
    assert shown.exit_code == 0 and "2 processes (ddp) on 1 host, cpu" in shown.output, shown.output


def test_fsdp_matches_ddp(runs):
    ddp, fsdp = metrics(runs / "ddp"), metrics(runs / "fsdp")
    assert same([m["metrics"]["loss"] for m in fsdp], [m["metrics"]["loss"] for m in ddp])
    a, b = final_weights(runs / "ddp"), final_weights(runs / "fsdp")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_pipeline_with_microbatches_matches_the_unsplit_model(runs):
    one, pipe = metrics(runs / "ref" / "one"), metrics(runs / "pipeline")
    assert same([m["metrics"]["loss"] for m in pipe], [m["metrics"]["loss"] for m in one])
    assert same([m["metrics"]["grad_norm"] for m in pipe], [m["metrics"]["grad_norm"] for m in one])
    log = (runs / "pipeline" / "train.log").read_text()
    assert "pipeline: 2 stages (1f1b, up to 2 micro-batches per batch), stages begin at model.layers.2" in log
    a, b = final_weights(runs / "ref" / "one"), final_weights(runs / "pipeline")
    assert sorted(a) == sorted(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_grpo_under_ddp_matches_one_process(runs):
    one, ddp = metrics(runs / "ref" / "one-grpo", "grpo"), metrics(runs / "grpo", "grpo")
    assert len(ddp) == 3 and any(m["metrics"]["rows_trained"] for m in ddp)   # the rewards vary: it trains
    for key in ("loss", "reward", "grad_norm", "rows_trained"):
        assert same([m["metrics"][key] for m in ddp], [m["metrics"][key] for m in one], rel=1e-4), key


def test_grpo_on_adapters_under_ddp_matches_one_process(runs):
    """LoRA under DDP: the adapters (and only they) train as in one process, with the reference as the
    policy with its adapter off on every rank."""
    from safetensors.torch import load_file

    one, ddp = metrics(runs / "ref" / "one-lora-grpo", "grpo"), metrics(runs / "lora-grpo", "grpo")
    assert len(ddp) == 3 and any(m["metrics"]["rows_trained"] for m in ddp)
    for key in ("loss", "reward", "grad_norm", "adapter_norm"):
        assert same([m["metrics"][key] for m in ddp], [m["metrics"][key] for m in one], rel=1e-4), key
    a, b = (load_file(str(r / "final" / "grpo" / "adapter_model.safetensors")) for r in (runs / "ref" / "one-lora-grpo",
                                                                                         runs / "lora-grpo"))
    assert sorted(a) == sorted(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_fsdp_checkpoint_resumes_on_one_process(runs, tmp_path):
    """Step 2 of the 2-process FSDP2 run, resumed by one process with twice the micro-batches (the
    same global batch): steps 3 and 4 as the two processes trained them."""
    from dswb.config import load_config
    from dswb.config.load import config_to_toml

    run = tmp_path / "resumed"
    shutil.copytree(runs / "fsdp", run)
    shutil.rmtree(run / "checkpoints" / "pretrain" / "step-4")
    shutil.rmtree(run / "final")
    config = load_config(run / "config.toml", ["train.grad_accum=2"])
    assert config.parallel.mode == "fsdp"
    (run / "config.toml").write_text(config_to_toml(config))
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "stopped"}))
    assert run_in_process(config, run, resume=True) == 0
    resumed = [m for m in metrics(run) if m["t"] > status["updated"]]
    assert [m["step"] for m in resumed] == [3, 4]
    two = {m["step"]: m["metrics"]["loss"] for m in metrics(runs / "fsdp")}
    assert same([m["metrics"]["loss"] for m in resumed], [two[3], two[4]])
    log = (run / "train.log").read_text()
    assert "data position of 2 ranks resumed on 1" in log and "distributed: fsdp over 1 process" in log
    a, b = final_weights(runs / "fsdp"), final_weights(run)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def _worker(root: Path) -> None:
    """Under torchrun: the 2-process runs, one after another, in the same process group."""
    from dswb.engine.distributed.world import active, shutdown

    for name, extra in RUNS.items():
        overrides = [*COMMON, *(rl_overrides(root) if "grpo" in name else []), *extra]
        code = run_in_process(tiny_config(*overrides), root / name)
        if code != 0:
            print(f"rank {active().rank}: run {name} ended with {code}", flush=True)
            shutdown(code, clean=False)
    shutdown(0)


if __name__ == "__main__":
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                      TOKENIZERS_PARALLELISM="false")
    _worker(Path(sys.argv[1]))
