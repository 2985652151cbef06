"""Config loading: presets parse, overrides apply, and every mistake names the place."""

from __future__ import annotations

from pathlib import Path

import pytest

from dswb.config import config_to_toml, load_config
from dswb.errors import UserError

PRESETS = sorted((Path(__file__).parent.parent / "presets").glob("*.toml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_shipped_presets_load_and_open_with_their_command(preset):
    load_config(preset)
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# Run: dswb run presets/")


def test_required_presets_exist():
    assert {p.name for p in PRESETS} >= {"smoke.toml", "demo.toml", "pretrain-local.toml"}


def test_pretrain_local_keeps_the_seed_defaults():
    cfg = load_config(Path(__file__).parent.parent / "presets" / "pretrain-local.toml")
    assert (cfg.data.chunk_size, cfg.data.chunk_overlap, cfg.data.min_chunk) == (512, 50, 256)
    assert cfg.batching.max_tokens == 8192
    assert cfg.train.clip_grad == 1.0


def test_overrides_apply_with_toml_types():
    cfg = load_config(None, ["train.lr=3e-4", "batching.max_tokens=4096",
                             "run.name=abc", "train.betas=[0.8, 0.9]", "data.clean=false"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.batching.max_tokens == 4096
    assert cfg.run.name == "abc"
    assert cfg.train.betas == [0.8, 0.9]
    assert cfg.data.clean is False


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.steps=7", "model.size=small"])
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("body,expected", [
    ("[train]\nlrr = 1\n", "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
    ("[trian]\nlr = 1\n", "unknown key 'trian' (did you mean 'train'?)"),
    ("[train]\nlr = 'fast'\n", "train.lr: expected a number, got 'fast'"),
    ("[train]\nsteps = 1.5\n", "train.steps: expected an integer"),
    ("[train]\nsteps = 0\n", "train.steps: must be >= 1"),
    ("[batching]\nmode = 'magic'\n", "batching.mode: 'magic' is not one of bucket, pack, fixed"),
    ("[data]\nchunk_size = 10\nchunk_overlap = 10\n", "data.chunk_overlap (10) must be smaller"),
    ("[run]\nstages = ['pretrain', 'dance']\n", "unknown stage 'dance'"),
    ("[train\nlr = 1\n", "invalid TOML"),
])
def test_bad_preset_names_file_and_key(tmp_path, body, expected):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


def test_missing_preset_file(tmp_path):
    with pytest.raises(UserError, match="no such preset file"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("item,expected", [
    ("train.lr", "expected SECTION.KEY=VALUE"),
    ("train.lr=abc", "--set: train.lr: expected a number"),
    ("nosection.x=1", "unknown key 'nosection'"),
])
def test_bad_override(item, expected):
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, [item])
