"""The system sampler: documented keys, absent (never failing) GPU keys, non-blocking reads."""

from __future__ import annotations

import re
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from dswb.engine.telemetry import system
from dswb.engine.telemetry.system import Nvml, SystemSampler, cuda_peak_mb, visible_gpu

pytestmark = pytest.mark.timeout(30)  # a watch or sampler that never ends fails fast

DOCS = Path(__file__).resolve().parent.parent / "docs" / "run-directory.md"
CPU_MEM_KEYS = {"cpu_pct", "sys_cpu_pct", "rss_mb", "ram_used_pct", "ram_used_mb"}
GPU_KEYS = {"gpu_util_pct", "gpu_mem_used_mb", "gpu_mem_total_mb", "gpu_temp_c"}


class FakeNVMLError(Exception):
    pass


def fake_pynvml(*, init_error: bool = False, temp_supported: bool = True, util_delay: float = 0.0,
                handle_error: bool = False) -> types.ModuleType:
    """A stand-in for nvidia-ml-py with one GPU (or none, or unsupported queries)."""
    nv = types.ModuleType("pynvml")
    nv.NVML_TEMPERATURE_GPU = 0
    nv.calls = []

    def init():
        if init_error:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def handle(index):
        if handle_error:
            raise FakeNVMLError("Invalid Argument")
        return ("gpu", index)

    def util(h):
        time.sleep(util_delay)
        return types.SimpleNamespace(gpu=87, memory=40)

    def unsupported(*args):
        raise FakeNVMLError("Not Supported")

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: nv.calls.append("shutdown")
    nv.nvmlDeviceGetHandleByIndex = handle
    nv.nvmlDeviceGetHandleByUUID = handle
    nv.nvmlDeviceGetUtilizationRates = util
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2048 * system.MB, total=81920 * system.MB)
    nv.nvmlDeviceGetTemperatureV = unsupported  # an older driver: fall back to the V0 call
    nv.nvmlDeviceGetTemperature = (lambda h, s: 64) if temp_supported else unsupported
    return nv


def documented_system_keys() -> set[str]:
    row = next(line for line in DOCS.read_text().splitlines() if line.startswith("| `system` |"))
    return set(re.findall(r"`([a-z_]+)`", row)) - {"system", "metrics"}


def test_keys_are_the_documented_ones(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sampler = SystemSampler(0.05).start()
    try:
        time.sleep(0.2)
        snap = sampler.latest()
    finally:
        sampler.stop()
    assert CPU_MEM_KEYS | GPU_KEYS <= set(snap)
    # sys_cpu_pct (machine-wide CPU) is the one key beyond the documented row
    assert set(snap) - {"sys_cpu_pct"} <= documented_system_keys()
    assert snap["gpu_util_pct"] == 87.0 and snap["gpu_temp_c"] == 64.0
    assert snap["gpu_mem_used_mb"] == 2048.0 and snap["gpu_mem_total_mb"] == 81920.0
    assert all(isinstance(v, float) for v in snap.values())
    assert snap["rss_mb"] > 1 and 0 < snap["ram_used_pct"] <= 100


def test_no_nvml_library_means_no_gpu_keys(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_error=True))
    with SystemSampler(0.05) as sampler:
        assert not sampler.gpu_available
        snap = sampler.latest()
    assert snap and not (set(snap) & GPU_KEYS)
    assert {"rss_mb", "ram_used_pct", "ram_used_mb"} <= set(snap)


def test_real_nvidia_ml_py_never_raises():
    """With or without a GPU here, the real library must not break sampling."""
    with SystemSampler(0.05) as sampler:
        time.sleep(0.15)
        snap = sampler.latest()
    assert {"cpu_pct", "rss_mb", "ram_used_mb"} <= set(snap)
    assert not sampler.running


def test_unsupported_query_is_an_absent_key(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(temp_supported=False))
    nvml = Nvml(0)
    snap = nvml.sample()
    nvml.shutdown()
    assert "gpu_temp_c" not in snap
    assert snap["gpu_util_pct"] == 87.0


def test_missing_gpu_handle_means_no_gpu(monkeypatch):
    nv = fake_pynvml(handle_error=True)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    nvml = Nvml(3)
    assert not nvml.available and nvml.sample() == {}
    assert nv.calls == ["shutdown"]


def test_latest_never_waits_for_a_slow_sample(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(util_delay=0.4))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sampler = SystemSampler(0.01)
    t0 = time.perf_counter()
    sampler.start()  # the first snapshot also waits for the slow query
    first = sampler.latest()
    time.sleep(0.1)  # now the thread is inside a slow sample
    t1 = time.perf_counter()
    for _ in range(100):
        snap = sampler.latest()
    read_s = time.perf_counter() - t1
    sampler.stop()
    assert time.perf_counter() - t0 < 3
    assert read_s < 0.05
    assert snap["gpu_util_pct"] == 87.0 and first["gpu_util_pct"] == 87.0
    snap["cpu_pct"] = -1.0  # a copy: callers cannot corrupt the sampler's snapshot
    assert sampler.latest().get("cpu_pct") != -1.0


def test_stop_ends_the_thread_and_is_idempotent(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    nv = sys.modules["pynvml"]
    sampler = SystemSampler(0.02)
    assert sampler.latest() == {}
    sampler.start()
    assert sampler.running
    assert any(t.name == "dswb-system-sampler" and t.daemon for t in threading.enumerate())
    sampler.stop()
    sampler.stop()
    assert not sampler.running
    assert nv.calls == ["shutdown"]
    assert not any(t.name == "dswb-system-sampler" for t in threading.enumerate())


def test_cuda_peak_from_torch_only_when_cuda_is_initialised(monkeypatch):
    state = {"init": False}
    cuda = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: state["init"],
                                 max_memory_allocated=lambda: 3 * system.MB)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert cuda_peak_mb() is None
    state["init"] = True
    assert cuda_peak_mb() == 3.0
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_error=True))
    assert SystemSampler().sample(cpu=False)["cuda_peak_mb"] == 3.0


def test_cuda_peak_absent_without_cuda(monkeypatch):
    cuda = types.SimpleNamespace(is_available=lambda: False, is_initialized=lambda: False,
                                 max_memory_allocated=lambda: pytest.fail("must not be called"))
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert cuda_peak_mb() is None
    monkeypatch.delitem(sys.modules, "torch")
    assert cuda_peak_mb() is None


@pytest.mark.parametrize("visible, rank, expected", [
    (None, None, 0), (None, "1", 1), ("2,3", None, 2), ("2,3", "1", 3), ("", None, None),
    ("-1", None, None), ("GPU-abc", None, "GPU-abc"), ("4", "x", 4),
])
def test_visible_gpu(monkeypatch, visible, rank, expected):
    for name, value in (("CUDA_VISIBLE_DEVICES", visible), ("LOCAL_RANK", rank)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert visible_gpu() == expected


def test_hidden_gpus_skip_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not Nvml().available
