"""A full disk at the writes a run makes: a checkpoint, the events/status/log files, the data cache.

Each must end the run `failed` (or `lost` where not even status.json can be written) with one
`error:` line naming the path and the free space, no traceback, no partial directory, and
`dswb run --resume` must finish the run once space is freed.

How the disk gets full. Each scenario runs in a child process:
- `tmpfs` (used wherever unprivileged user + mount namespaces are allowed, `unshare -Urm`): the
  child mounts a real tmpfs of a few MB and fills it with a ballast file, so the kernel returns
  ENOSPC from the real write calls of every writer (Python, torch's C++ zip writer, safetensors'
  Rust writer, numpy).
- `inject` (a locked-down CI container that cannot mount): the child installs `install_shim`,
  which makes Python-level writes under the directory (`open(...).write`, `os.write`, files from
  `os.fdopen`) raise `OSError(ENOSPC)` once a byte budget is spent or a "disk full" switch is on.
  safetensors' Rust writer is not intercepted there (torch.save, which dswb calls with a Python
  file object, is). `DSWB_TEST_DISK=inject` forces this mode to check it.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CONTROL_ENV = "DSWB_TEST_ENOSPC"
TINY_ARGS = ["model.size=tiny", "model.max_seq_len=32", "data.source=task", "task.n_train=600", "task.n_val=40",
             "task.n_test=40", "batching.max_tokens=512", "train.warmup_steps=2", "train.lr=1e-3", "eval.every=0",
             "eval.max_batches=2", "eval.task_samples=8", "run.threads=1", "monitor.system_every_s=0.2"]
MB = 1 << 20


# --- the injected full disk (runs inside a dswb child process) --------------------------------

def install_shim() -> None:
    """Make writes under the directory named in the control file fail with ENOSPC (see module doc)."""
    import builtins
    import io

    control = os.environ[CONTROL_ENV]
    real_open, real_os_open, real_write = builtins.open, os.open, os.write
    fd_paths: dict[int, str] = {}
    written = [0]

    with real_open(control) as f:
        directory = json.load(f)["dir"]

    def must_fail(path: str, n: int) -> bool:
        if not os.path.abspath(path).startswith(directory):
            return False
        with real_open(control) as f:
            cfg = json.load(f)
        if cfg.get("full"):
            return True
        if cfg.get("budget") is not None and written[0] + n > cfg["budget"]:
            return True
        written[0] += n
        return False

    def enospc(path: str) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class Guarded:
        def __init__(self, inner, path: str) -> None:
            self._inner, self._path = inner, path

        def write(self, data):
            if must_fail(self._path, len(data)):
                raise enospc(self._path)
            return self._inner.write(data)

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._inner.close()

        def __iter__(self):
            return iter(self._inner)

    def guarded_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+"):
            path = fd_paths.get(file) if isinstance(file, int) else os.fspath(file)
            if path is not None:
                return Guarded(f, os.fsdecode(path))
        return f

    def guarded_os_open(path, flags, *args, **kwargs):
        fd = real_os_open(path, flags, *args, **kwargs)
        fd_paths[fd] = os.fsdecode(os.path.abspath(path))
        return fd

    def guarded_write(fd, data):
        path = fd_paths.get(fd)
        if path is not None and must_fail(path, len(data)):
            raise enospc(path)
        return real_write(fd, data)

    builtins.open = io.open = guarded_open
    os.open, os.write = guarded_os_open, guarded_write


SHIM_BOOT = ("import sys, tests.test_faults_disk as t; t.install_shim(); "
             "from dswb.cli.app import main; sys.argv[0] = 'dswb'; main()")


# --- a disk that can be filled and freed (inside the scenario child) -------------------------

class Disk:
    def __init__(self, mode: str, path: Path, size: int) -> None:
        self.mode, self.path = mode, path
        path.mkdir(parents=True, exist_ok=True)
        self.ballast = path / ".ballast"
        self.control = path.parent / f".{path.name}-enospc.json"
        if mode == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        else:
            self._set(budget=None, full=False)

    def _set(self, **cfg) -> None:
        self.control.write_text(json.dumps({"dir": str(self.path), **cfg}))

    def leave(self, free: int) -> None:
        """Leave about `free` bytes for the next process."""
        if self.mode == "inject":
            self._set(budget=free, full=False)
            return
        st = os.statvfs(self.path)
        with open(self.ballast, "ab") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free))

    def fill(self) -> None:
        """Take every byte that is left, as another process filling a shared disk would."""
        if self.mode == "inject":
            self._set(budget=None, full=True)
            return
        try:
            with open(self.ballast, "ab") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        except OSError:
            pass

    def free(self) -> None:
        if self.mode == "inject":
            self._set(budget=None, full=False)
        self.ballast.unlink(missing_ok=True)

    def dswb(self, *args: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "dswb"] if self.mode == "tmpfs" else [sys.executable, "-c", SHIM_BOOT]
        env = {**os.environ, CONTROL_ENV: str(self.control), "HF_HUB_OFFLINE": "1"}
        return subprocess.Popen([*cmd, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def _sets(*items: str) -> list[str]:
    return [a for item in (*TINY_ARGS, *items) for a in ("--set", item)]


def _finish(proc: subprocess.Popen, timeout: float = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    return {"rc": proc.returncode, "stdout": out, "stderr": err}


def _observe(run_dir: Path) -> dict:
    from dswb.rundir import effective_state, read_events, read_status
    from dswb.rundir.manifest import verify_run

    status = read_status(run_dir / "status.json")
    alerts = [(a.get("level"), a.get("code")) for a in read_events(run_dir / "events.jsonl", ("alert",))]
    return {"state": effective_state(status), "status_state": (status or {}).get("state"), "alerts": alerts,
            "partial": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".tmp-*")),
            "verify": {str(v.path.relative_to(run_dir)): v.status for v in verify_run(run_dir)}}


def scenario_checkpoint(mode: str, work: Path) -> dict:
    """Room for data and one checkpoint (~8.5 MB each) but not two: the second checkpoint fails."""
    disk = Disk(mode, work / "disk", 64 * MB)
    run_dir = disk.path / "runs" / "r"
    disk.leave(12 * MB if mode == "tmpfs" else 9 * MB)   # inject: the safetensors bytes are not counted
    args = _sets("train.steps=12", "checkpoint.every=4", "checkpoint.keep_last=2")
    first = {**_finish(disk.dswb("run", "--plain", "--run-dir", run_dir, *args)), **_observe(run_dir)}
    disk.free()
    second = {**_finish(disk.dswb("run", "--plain", "--resume", run_dir)), **_observe(run_dir)}
    final = run_dir / "final" / "pretrain" / "model.safetensors"
    if final.exists():
        (work / "final.safetensors").write_bytes(final.read_bytes())
    return {"first": first, "second": second}


def scenario_events(mode: str, work: Path) -> dict:
    """The disk fills while training (another process takes the last bytes): the next event,
    status or log write fails."""
    from dswb.rundir import read_events

    disk = Disk(mode, work / "disk", 16 * MB)
    run_dir = disk.path / "runs" / "e"
    args = _sets("train.steps=80", "checkpoint.every=0", "checkpoint.keep_last=1")
    proc = disk.dswb("run", "--plain", "--run-dir", run_dir, *args)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if any(e.get("step", 0) >= 3 for e in read_events(run_dir / "events.jsonl", ("metrics",))):
            break
        time.sleep(0.02)
    disk.fill()
    first = {**_finish(proc), **_observe(run_dir)}
    disk.free()
    second = {**_finish(disk.dswb("run", "--plain", "--resume", run_dir)), **_observe(run_dir)}
    return {"first": first, "second": second}


def scenario_cache(mode: str, work: Path) -> dict:
    """The data cache is on its own full filesystem; the run directory has room."""
    disk = Disk(mode, work / "cache", 4 * MB)
    disk.leave(8 << 10)
    run_dir = work / "runs" / "c"
    result = _finish(disk.dswb("run", "--plain", "--run-dir", run_dir,
                               *_sets("train.steps=4", f"data.cache_dir={disk.path}")))
    return {"first": {**result, **_observe(run_dir),
                      "cache_partial": sorted(p.name for p in disk.path.glob(".tmp-*"))}}


def child(args_json: str) -> None:
    args = json.loads(args_json)
    work = Path(args["work"])
    result = globals()[f"scenario_{args['scenario']}"](args["mode"], work)
    (work / "result.json").write_text(json.dumps(result))


# --- the tests ---------------------------------------------------------------------------------

def _can_mount_tmpfs() -> bool:
    with tempfile.TemporaryDirectory() as d:
        try:
            probe = subprocess.run(["unshare", "-Urm", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d],
                                   capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
        return probe.returncode == 0


@functools.lru_cache(maxsize=1)
def disk_mode() -> str:
    return os.environ.get("DSWB_TEST_DISK") or ("tmpfs" if _can_mount_tmpfs() else "inject")


def _run_scenario(name: str, work: Path) -> dict:
    args = json.dumps({"scenario": name, "work": str(work), "mode": disk_mode()})
    cmd = [sys.executable, "-c", f"import tests.test_faults_disk as t; t.child({args!r})"]
    if disk_mode() == "tmpfs":
        cmd = ["unshare", "-Urm", *cmd]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=560)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "result.json").read_text())


def _one_disk_full_line(result: dict, where: str) -> str:
    assert result["rc"] == 1, result
    assert "Traceback" not in result["stderr"] and "Traceback" not in result["stdout"], result["stderr"]
    # Only dswb's own lines count: an installed library may print import warnings of its own.
    lines = [line for line in result["stderr"].splitlines() if line.startswith("error")]
    assert len(lines) == 1, result["stderr"]
    line = lines[0]
    assert line.startswith("error: no space left on device writing ") and where in line, line
    assert " free there" in line, line
    return line


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_full_disk_at_a_checkpoint_keeps_the_last_one_and_resume_finishes_bitwise(tmp_path):
    from safetensors.torch import load_file
    from tests.helpers import run_in_process, tiny_config

    result = _run_scenario("checkpoint", tmp_path)
    first, second = result["first"], result["second"]
    _one_disk_full_line(first, "checkpoints/pretrain/step-8")
    assert first["state"] == "failed" and first["status_state"] == "failed"
    assert first["partial"] == []                                  # no partial checkpoint left
    assert first["verify"] == {"checkpoints/pretrain/step-4": "ok"}
    if disk_mode() == "tmpfs":   # injected ENOSPC leaves the real free space large: no reason to warn there
        assert ["error", "disk_space_low"] in first["alerts"]      # "the next checkpoint will not fit"
    assert second["rc"] == 0, second["stderr"][-2000:]
    assert second["state"] == "finished" and second["partial"] == []
    assert set(second["verify"].values()) == {"ok"} and "final/pretrain" in second["verify"]

    reference = tmp_path / "reference"
    assert run_in_process(tiny_config("train.steps=12", "checkpoint.every=4", "checkpoint.keep_last=2"), reference) == 0
    a = load_file(str(reference / "final" / "pretrain" / "model.safetensors"))
    b = load_file(str(tmp_path / "final.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_full_disk_while_writing_events_ends_the_run_in_one_line_then_resume_works(tmp_path):
    result = _run_scenario("events", tmp_path)
    first, second = result["first"], result["second"]
    _one_disk_full_line(first, "/runs/e/")
    assert first["state"] in ("failed", "lost")       # failed if status.json could still be written
    assert first["status_state"] != "finished" and first["partial"] == []
    assert second["rc"] == 0, second["stderr"][-2000:]
    assert second["state"] == "finished"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_full_disk_in_the_data_cache(tmp_path):
    first = _run_scenario("cache", tmp_path)["first"]
    _one_disk_full_line(first, str(tmp_path / "cache"))
    assert first["state"] == "failed" and first["status_state"] == "failed"
    assert first["cache_partial"] == []
