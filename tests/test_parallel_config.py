"""`[parallel]`: defaults, memory sizes, and one-line errors for every bad combination."""

from __future__ import annotations

import pytest

from dswb.config import load_config
from dswb.config.parallel import PARALLEL_MODES, parse_size, role_devices
from dswb.errors import UserError


def test_defaults_and_round_trip(tmp_path):
    from dswb.config.load import config_to_toml

    config = load_config(None)
    assert config.parallel.mode == "none" and config.parallel.devices == ["auto"]
    assert "none" in PARALLEL_MODES and "layers" in PARALLEL_MODES
    path = tmp_path / "c.toml"
    config = load_config(None, ["parallel.mode=layers", 'parallel.devices=["cpu","cpu"]', 'parallel.max_memory=["2GB"]'])
    path.write_text(config_to_toml(config))
    assert load_config(path).parallel == config.parallel
    assert role_devices(config, "reference") == ["cpu", "cpu"]


@pytest.mark.parametrize("text,expected", [("80GB", 80 * 10**9), ("79.5GiB", int(79.5 * 2**30)), ("512 mb", 512 * 10**6),
                                           ("1000", 1000), ("2TB", 2 * 10**12), ("64KiB", 65536)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "80 gigs", "-1GB", "8e9"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("overrides,needle", [
    (["parallel.mode=tensor"], "parallel.mode: 'tensor' is not one of none, layers, ddp, fsdp, pipeline"),
    (['parallel.devices=[]'], "parallel.devices: give [\"auto\"] or at least one device"),
    (['parallel.devices=["auto","cpu"]'], "\"auto\" stands alone"),
    (['parallel.devices=["gpu0"]'], "parallel.devices[0]: 'gpu0' is not a device"),
    (["run.device=cpu", 'parallel.devices=["cuda:1"]'], "'cuda:1' is a GPU but run.device = 'cpu'"),
    (['parallel.max_memory=["80 gigs"]'], "parallel.max_memory[0]: '80 gigs' is not a memory size"),
    (['parallel.max_memory=["0GB"]'], "parallel.max_memory[0]: '0GB' is not a positive size"),
    (['parallel.devices=["cpu","cpu"]', 'parallel.max_memory=["1GB","2GB","3GB"]'], "3 sizes for 2 devices"),
    (['parallel.max_memory=["1GB","2GB"]'], 'devices = ["auto"]'),
    (['parallel.reference_devices=["cpu","cpu"]'], "parallel.reference_devices: several devices split a model by layers"),
    (["parallel.mode=layers", "run.device=cuda", 'parallel.devices=["cpu","cuda:0"]'], "parallel.devices[0]: the first device"),
    (["parallel.balance=speed"], "parallel.balance: 'speed' is not one of memory, compute"),
    (['parallel.devices=["cuda","cuda:1","cuda:0"]'], "cuda:0 is listed twice"),
])
def test_bad_parallel_settings_are_one_line_errors(overrides, needle):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_memory_model_follows_precision_fp8_batching_and_checkpointing():
    from dswb.engine.placement.memory import memory_model_from_config

    config = load_config(None, ["batching.max_tokens=4096", "model.max_seq_len=1024"])
    assert memory_model_from_config(config, "cpu").compute == "fp32"
    gpu = memory_model_from_config(config, "cuda")
    assert (gpu.compute, gpu.tokens, gpu.seq_len, gpu.activation_checkpointing) == ("bf16", 4096, 1024, False)
    assert memory_model_from_config(load_config(None, ["fp8.enabled=true"]), "cuda").compute == "fp8"
    fixed = load_config(None, ["batching.mode=fixed", "batching.batch_size=8", "model.max_seq_len=256",
                               "parallel.activation_checkpointing=true"])
    mm = memory_model_from_config(fixed, "cuda", optimizer_state="bf16")
    assert (mm.tokens, mm.state_bytes, mm.activation_checkpointing) == (8 * 256, 2, True)
    assert not memory_model_from_config(fixed, "cuda", trainable=False).activation_checkpointing
