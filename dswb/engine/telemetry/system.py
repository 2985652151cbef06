"""System sampler for the training process: CPU, memory, GPU, sampled on a background thread.

`SystemSampler(interval_s)` samples every `interval_s` seconds on a daemon thread; `latest()`
returns the last snapshot (a dict replaced whole, so reading never waits on a sample). Keys are
the `system` event's metrics in docs/run-directory.md:

- `cpu_pct`: this process's CPU % (100 = one core busy, as in `top`); `sys_cpu_pct`: the whole
  machine's CPU % (0-100);
- `rss_mb`: this process's resident memory; `ram_used_pct`, `ram_used_mb`: the machine's RAM in
  use (total minus available, so the two agree);
- with a GPU (nvidia-ml-py): `gpu_util_pct`, `gpu_mem_used_mb`, `gpu_mem_total_mb`, `gpu_temp_c`;
- `cuda_peak_mb`: `torch.cuda.max_memory_allocated()` once this process has initialised CUDA;
- `disk_free_gb`: free space (GiB, 2^30 bytes, available to this user) on the filesystem of
  `disk_path` (the run directory, under the runs root), when one is given.

Like nvitop, every NVML query sits behind a wrapper that turns "no library", "no GPU" or
"not supported" into an absent key: sampling never raises.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from typing import Any, Callable

import psutil

MB = 1024 * 1024
GB = 1024 * MB


def _try(fn: Callable[[], Any]) -> Any:
    """`fn()`, or None on any error (NVML "not supported", a vanished process, ...)."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a sampler must never take the training process down
        return None


def visible_gpu() -> int | str | None:
    """The NVML index or UUID of this process's GPU, from CUDA_VISIBLE_DEVICES and LOCAL_RANK.

    None when CUDA_VISIBLE_DEVICES hides every GPU.
    """
    rank_text = os.environ.get("LOCAL_RANK", "0").strip()
    rank = int(rank_text) if rank_text.isdigit() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return rank
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if not entries or entries[0].startswith("-"):
        return None
    entry = entries[min(rank, len(entries) - 1)]
    return int(entry) if entry.isdigit() else entry


class Nvml:
    """A thin nvidia-ml-py wrapper for one GPU; `available` is False when there is none."""

    def __init__(self, device: int | str | None = None) -> None:
        self.available = False
        self._nvml: Any = None
        self._handle: Any = None
        target = visible_gpu() if device is None else device
        if target is None:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # noqa: BLE001 - no library (NVMLError_LibraryNotFound), no driver, no GPU
            return
        self._nvml = pynvml
        if isinstance(target, int):
            self._handle = _try(lambda: pynvml.nvmlDeviceGetHandleByIndex(target))
        else:
            self._handle = _try(lambda: pynvml.nvmlDeviceGetHandleByUUID(target))
        if self._handle is None:
            self.shutdown()
            return
        self.available = True

    def sample(self) -> dict[str, float]:
        if not self.available:
            return {}
        nv, handle = self._nvml, self._handle
        out: dict[str, float] = {}
        util = _try(lambda: nv.nvmlDeviceGetUtilizationRates(handle))
        if util is not None:
            out["gpu_util_pct"] = float(util.gpu)
        mem = _try(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        if mem is not None:
            out["gpu_mem_used_mb"] = mem.used / MB
            out["gpu_mem_total_mb"] = mem.total / MB
        temp = _try(lambda: nv.nvmlDeviceGetTemperatureV(handle, nv.NVML_TEMPERATURE_GPU))
        if temp is None:
            temp = _try(lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        if temp is not None:
            out["gpu_temp_c"] = float(temp)
        return out

    def shutdown(self) -> None:
        if self._nvml is not None:
            _try(self._nvml.nvmlShutdown)
        self._nvml, self._handle, self.available = None, None, False


def cuda_peak_mb() -> float | None:
    """Peak CUDA memory allocated by torch in this process, if it has initialised CUDA.

    torch is taken from `sys.modules` (imported by the training code), never imported here, and
    CUDA is never initialised from the sampler thread.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not _try(cuda.is_available) or not _try(cuda.is_initialized):
        return None
    peak = _try(cuda.max_memory_allocated)
    return None if peak is None else peak / MB


class SystemSampler:
    """Samples the system every `interval_s` seconds on a daemon thread; `latest()` never blocks.

    with SystemSampler(2.0) as sampler:
        ...
        events.emit("system", stage, step, metrics=sampler.latest())
    """

    def __init__(self, interval_s: float = 2.0, gpu: int | str | None = None,
                 disk_path: str | os.PathLike | None = None) -> None:
        self.interval_s = max(0.01, float(interval_s))
        self._gpu = gpu
        self._disk_path = disk_path
        self._latest: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()
        self._nvml: Nvml | None = None

    def latest(self) -> dict[str, float]:
        """The last snapshot (a copy); empty before `start()`."""
        return dict(self._latest)

    def sample(self, cpu: bool = True) -> dict[str, float]:
        """Take one snapshot now (CPU % covers the time since the previous snapshot)."""
        out: dict[str, float] = {}
        if cpu:
            value = _try(self._process.cpu_percent)
            if value is not None:
                out["cpu_pct"] = float(value)
            value = _try(psutil.cpu_percent)
            if value is not None:
                out["sys_cpu_pct"] = float(value)
        rss = _try(lambda: self._process.memory_info().rss)
        if rss is not None:
            out["rss_mb"] = rss / MB
        vm = _try(psutil.virtual_memory)
        if vm is not None:
            out["ram_used_pct"] = float(vm.percent)
            out["ram_used_mb"] = (vm.total - vm.available) / MB
        if self._nvml is not None:
            out.update(self._nvml.sample())
        peak = cuda_peak_mb()
        if peak is not None:
            out["cuda_peak_mb"] = peak
        if self._disk_path is not None:
            usage = _try(lambda: shutil.disk_usage(self._disk_path))
            if usage is not None:
                out["disk_free_gb"] = usage.free / GB
        return out

    def start(self) -> "SystemSampler":
        """Start sampling; the first snapshot (without CPU %, which needs an interval) is ready on return."""
        if self._thread is not None and self._thread.is_alive():
            return self
        if self._nvml is None:
            self._nvml = Nvml(self._gpu)
        _try(self._process.cpu_percent)  # the first call only sets the baseline
        _try(psutil.cpu_percent)
        self._latest = self.sample(cpu=False)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dswb-system-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._latest = self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
            self._thread = None
        if self._nvml is not None:
            self._nvml.shutdown()
            self._nvml = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def gpu_available(self) -> bool:
        return self._nvml is not None and self._nvml.available

    def __enter__(self) -> "SystemSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
