"""The dashboard's side of a distributed run (issue 9): the world size in the header, one line per
rank (host, device or GPU, that rank's latest figures) in the system panel, and hostile `ranks`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fixtures.tui_support import make_app, screen_text, settle

from dswb.rundir import EventWriter, RunPaths, create_run_dir, write_status
from dswb.tui.model import RunModel
from dswb.tui.sanitize import MAX_RANKS, clean_ranks
from dswb.tui.screens.dashboard_keys import TAB_KEYS
from dswb.tui.widgets.system_panel import render_ranks

pytestmark = pytest.mark.timeout(60)

RANKS = [{"rank": 0, "local_rank": 0, "host": "gpu-a", "pid": 11, "device": "cuda:0", "gpu_name": "NVIDIA H200"},
         {"rank": 1, "local_rank": 1, "host": "gpu-b", "pid": 12, "device": "cuda:0", "gpu_name": "NVIDIA H200"}]


def _sample(rank: dict, cpu: float, util: float) -> dict:
    return {**{k: rank[k] for k in ("rank", "host", "device", "gpu_name")}, "cpu_pct": cpu, "rss_mb": 812.0,
            "gpu_util_pct": util, "gpu_mem_used_mb": 40_960.0, "gpu_mem_total_mb": 143_771.0}


def _events() -> list[dict]:
    t = time.time()
    return [{"t": t, "kind": "run_start", "stage": None, "step": 0, "run_id": "r", "config": {}, "argv": [],
             "resumed": False, "pid": 11, "world_size": 2, "parallel_mode": "fsdp", "ranks": RANKS},
            {"t": t + 1, "kind": "system", "stage": "pretrain", "step": 3, "metrics": {"cpu_pct": 99.0},
             "ranks": [_sample(RANKS[0], 99.0, 97.5), _sample(RANKS[1], 98.0, 42.5)]}]


def test_the_model_keeps_the_world_and_each_ranks_latest_sample():
    model = RunModel(RunPaths(Path("unused")))
    model.ingest(_events())
    assert model.world_text() == "2 x fsdp"
    assert [(r["rank"], r["host"], r["gpu_util_pct"]) for r in model.ranks] == [(0, "gpu-a", 97.5), (1, "gpu-b", 42.5)]
    assert render_ranks(model.ranks).row_count == 2


def test_a_single_process_run_has_no_world_line():
    model = RunModel(RunPaths(Path("unused")))
    model.ingest([{"t": 1.0, "kind": "run_start", "stage": None, "step": 0, "config": {}}])
    assert model.world_text() == "" and model.ranks == []


@pytest.mark.parametrize("value", [None, "ranks", 7, {"rank": 0}, [None, 1, "x", []]])
def test_hostile_ranks_are_dropped(value):
    assert clean_ranks(value) == []


def test_hostile_rank_entries_are_cut_and_bounded():
    huge = {"rank": "zero", "host": "h" * 100_000, "device": ["cuda"], "cpu_pct": 1e308 * 10, "rss_mb": "x",
            "gpu_util_pct": 10 ** 400, "extra": {"a": 1}}
    kept = clean_ranks([huge] * (MAX_RANKS + 50))
    assert len(kept) == MAX_RANKS
    first = kept[0]
    assert first["rank"] == 0 and len(first["host"]) < 100 and "cut" in first["host"]
    assert first["device"].startswith("[") and first["gpu_util_pct"] is None and "rss_mb" not in first
    render_ranks(kept)   # every entry renders


def test_a_hostile_world_size_reads_as_one_process():
    model = RunModel(RunPaths(Path("unused")))
    for size in (True, -3, 1e308, "2", None):
        model.ingest([{"t": 1.0, "kind": "run_start", "stage": None, "step": 0, "config": {}, "world_size": size,
                       "parallel_mode": {"x": 1}}])
        assert model.world_size == 1 and model.world_text() == ""


async def test_the_dashboard_shows_the_world_and_every_rank(tmp_path):
    paths = create_run_dir(tmp_path / "20261128-120000-fsdp")
    paths.config.write_text('[run]\nname = "fsdp"\n')
    writer = EventWriter(paths.events)
    for event in _events():
        writer.emit(event.pop("kind"), event.pop("stage"), event.pop("step"),
                    **{k: v for k, v in event.items() if k != "t"})
    write_status(paths.status, {"run_id": paths.run_id, "state": "finished", "stage": "pretrain", "step": 3,
                                "total_steps": 3, "stages": ["pretrain"], "world_size": 2, "parallel_mode": "fsdp",
                                "ranks": RANKS, "started": time.time(), "updated": time.time()})
    app = make_app(tmp_path, attach=paths.run_id)
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        assert "2 x fsdp" in screen_text(app)
        await pilot.press(TAB_KEYS["system"])
        await settle(pilot)
        text = screen_text(app)
        assert "2 ranks" in text and "gpu-a" in text and "gpu-b" in text, text
        assert "cuda:0 NVIDIA H200" in text and "42.5%" in text
    assert json.loads(paths.status.read_text())["world_size"] == 2   # the viewer only reads
