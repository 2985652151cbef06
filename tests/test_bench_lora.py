"""`dswb bench lora`: the memory part on a tiny model (real runs, real checkpoints), the table from a fake
result, the choice of parts; the whole quick memory part through the CLI is slow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dswb.bench import lora
from dswb.errors import UserError


@pytest.fixture(scope="module")
def tiny_memory(tmp_path_factory):
    """The memory part on the tiny model, full and LoRA, 2 steps each, in this process (the bench runs
    each in a child; what it measures is the same)."""
    variants = {k: v for k, v in lora.memory_variants().items() if k in ("full", "lora")}
    return lora.measure_memory(tmp_path_factory.mktemp("bench-lora"), "tiny", 2, 8, variants, run=lora.child)


def test_memory_part_measures_real_runs_and_checkpoints(tiny_memory):
    full, adapter = tiny_memory["rows"]["full"], tiny_memory["rows"]["lora"]
    assert full["steps"] == adapter["steps"] == 2
    assert full["trainable"] == full["params"]
    assert 0 < adapter["trainable"] < full["trainable"] < adapter["params"]   # adapters add parameters, train few
    for r in (full, adapter):
        assert 0 < r["rss_start_mb"] <= r["peak_process_mb"]
        assert r["peak_steps_mb"] > 0 and r["anon_end_mb"] > 0 and r["step_s"] > 0
    # the checkpoint holds what trains: fp32 weights, and AdamW's two moments of each
    for r, trained in ((full, full["trainable"]), (adapter, adapter["trainable"])):
        assert r["checkpoint_mb"]["model.safetensors"] == pytest.approx(4 * trained / 1e6, rel=0.05)
        assert r["checkpoint_mb"]["optimizer.pt"] == pytest.approx(8 * trained / 1e6, rel=0.05)
    assert sum(adapter["checkpoint_mb"].values()) < 0.5 * sum(full["checkpoint_mb"].values())


def test_memory_table_shows_the_measured_ratio(tiny_memory):
    table = lora.format_table({"lora": lora.LORA, "parts": ["memory"], "trl_installed": True, "memory": tiny_memory})
    rows = tiny_memory["rows"]
    ratio = sum(rows["lora"]["checkpoint_mb"].values()) / sum(rows["full"]["checkpoint_mb"].values())
    assert "llama-tiny, 2 steps of 8 sequences" in table
    assert f"{ratio:.3f}x" in table
    assert f"{rows['full']['trainable']:,}" in table
    gpu_rows = {name: {**r, "cuda_peak_mb": mb} for (name, r), mb in zip(rows.items(), (800, 200))}
    on_gpu = {**tiny_memory, "rows": gpu_rows}
    table = lora.format_table({"lora": lora.LORA, "parts": ["memory"], "trl_installed": True, "memory": on_gpu})
    assert "max_memory_allocated over the steps): full 800 MB (1.00x), lora 200 MB (0.25x)" in table


def _trial(acc: float, wall: float, cpu: float) -> dict:
    return {"test_acc": acc, "iterations": 10, "mean_iteration_s": wall, "cpu_iteration_s": cpu, "load_1min": 1.0}


def _stage(rows: list[dict], systems: list[str]) -> dict:
    return {"seconds": 60.0, "systems": systems, "rows": rows,
            "settings": {"full": {"lr": 5e-5}, "lora": {"lr": 5e-4}},
            "means": lora.system_means(rows, systems, lora.PER_STEP)}


def test_table_compares_lora_with_full_and_trl_against_the_goal():
    grpo = [{"seed": s, "full": _trial(0.60, 0.20, 0.20), "lora": _trial(0.58, 0.18, 0.15),
             "trl-lora": _trial(0.55, 0.30, 0.30)} for s in (0, 1)]
    sft = [{"seed": 0, "lora": _trial(0.40, 0.10, 0.10), "trl-lora": _trial(0.45, 0.20, 0.20)}]
    result = {"lora": lora.LORA, "parts": ["sft", "grpo"], "trl_installed": True, "threads": 1,
              "start": {"init": "/start", "start_acc": 0.30},
              "grpo": _stage(grpo, ["full", "lora", "trl-lora"]), "sft": _stage(sft, ["lora", "trl-lora"])}
    table = lora.format_table(result)
    assert "dswb lora vs full: gain +28.0 vs +30.0, time per step 0.90x wall, 0.75x CPU" in table
    assert "gain +28.0 vs +25.0, time per step 0.60x wall, 0.50x CPU" in table     # grpo: goal met
    assert "gain +10.0 vs +15.0, time per step 0.50x wall, 0.50x CPU" in table     # sft: less gain
    assert table.count("wall met, CPU met") == 1 and table.count("wall not met, CPU not met") == 1


def test_parts_are_checked():
    assert lora.choose_parts(None, have_trl=False) == ["memory", "sft", "grpo"]
    assert lora.choose_parts("grpo, trl-grpo", have_trl=True) == ["grpo", "trl-grpo"]
    assert lora.systems_for("grpo", {"grpo", "trl-grpo"}) == ["full", "lora", "trl-lora"]
    assert lora.systems_for("sft", {"trl-sft"}) == ["lora", "trl-lora"]
    with pytest.raises(UserError, match="unknown memroy"):
        lora.choose_parts("memroy", have_trl=True)
    with pytest.raises(UserError, match="TRL is not installed"):
        lora.choose_parts("trl-sft", have_trl=False)


def test_parts_option_only_for_benches_with_parts():
    from dswb.cli.bench_cmd import bench

    with pytest.raises(UserError, match="takes no --parts"):
        bench("batching", json_path=None, quick=True, trials=None, init=None, live=False, threads=None, parts="x")


@pytest.mark.slow
def test_quick_memory_part_through_the_cli(tmp_path):
    out = tmp_path / "lora.json"
    done = subprocess.run([sys.executable, "-m", "dswb", "bench", "lora", "--quick", "--parts", "memory",
                           "--json", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["memory"]["rows"]
    assert set(rows) >= {"full", "lora"}
    assert rows["lora"]["peak_steps_mb"] < rows["full"]["peak_steps_mb"] * 1.2
    assert sum(rows["lora"]["checkpoint_mb"].values()) < 0.2 * sum(rows["full"]["checkpoint_mb"].values())
