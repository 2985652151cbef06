"""Disk space, piece by piece: recognising a full disk in every writer's words, whole-line appends,
status and sinks that fail in one line, checkpoint and final-model writes that leave nothing
partial, the low-space alert before a checkpoint, and `disk_free_gb` in the system metrics.
(The end-to-end runs on a really full filesystem are in test_faults_disk.py.)"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import dswb.engine.checkpoint.layout as checkpoint
from dswb.engine.checkpoint.io import save_checkpoint
import dswb.rundir.events as events_mod
import dswb.rundir.status as status_mod
from dswb.engine.checkpoint.final import save_final
from dswb.engine.telemetry.monitor import Monitor
from dswb.engine.telemetry.system import SystemSampler
from dswb.rundir import create_run_dir, read_events, read_status, write_status
from dswb.rundir.events import AppendFile
from dswb.rundir.manifest import write_manifest
from dswb.rundir.space import DiskFull, checkpoints_room, disk_full_error, is_disk_full
from dswb.rundir.status import new_status

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FillingFile(io.RawIOBase):
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, path, mode="wb", room: int = 1000) -> None:
        self._f, self.room = open(path, mode), room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self._f.write(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def test_a_full_disk_is_recognised_in_every_writers_words(tmp_path, monkeypatch):
    assert is_disk_full(OSError(errno.ENOSPC, "x")) and is_disk_full(OSError(errno.EDQUOT, "x"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied")) and not is_disk_full(ValueError("x"))
    try:  # torch.save through a Python file object: the errno survives as the RuntimeError's context
        torch.save({"w": torch.randn(10_000)}, FillingFile(tmp_path / "a.pt"))
    except RuntimeError as exc:
        assert "unexpected pos" in str(exc) and is_disk_full(exc)
    else:
        pytest.fail("torch.save did not fail")
    assert is_disk_full(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    bare = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    numpy_short = OSError("7040 requested and 4032 written")
    assert not is_disk_full(bare, tmp_path)  # errno-less: only when the filesystem is nearly full
    monkeypatch.setattr("dswb.rundir.space.free_bytes", lambda path: 4096)
    assert is_disk_full(bare, tmp_path) and is_disk_full(numpy_short, [tmp_path]) and not is_disk_full(bare)
    error = disk_full_error(OSError(errno.ENOSPC, "x", str(tmp_path / "f.bin")), [tmp_path])
    assert str(error).startswith(f"no space left on device writing {tmp_path / 'f.bin'} (4.0 KiB free there)")
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC and "\n" not in str(error)
    assert checkpoints_room(10, 3) == 3 and checkpoints_room(2, 3) == 0


class _TornOs:
    """`os` for events.py whose write stores 7 bytes, then fails with ENOSPC."""

    def __init__(self) -> None:
        self.calls = 0

    def write(self, fd, data):
        self.calls += 1
        if self.calls == 1:
            return os.write(fd, bytes(data[:7]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(os, name)


def test_an_append_cut_short_by_a_full_disk_is_taken_back(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    f = AppendFile(path)
    f.write(b'{"step": 1}\n')
    monkeypatch.setattr(events_mod, "os", _TornOs())
    with pytest.raises(DiskFull, match=f"writing {path} "):
        f.write(b'{"step": 2, "metrics": {"loss": 1.0}}\n')
    monkeypatch.undo()
    assert path.read_bytes() == b'{"step": 1}\n'   # the 7 torn bytes are gone
    f.write(b'{"step": 3}\n')
    f.close()
    assert [e["step"] for e in read_events(path)] == [1, 3]


def test_status_write_on_a_full_disk_keeps_the_old_file_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "status.json"
    write_status(path, {"state": "running"})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(status_mod.json, "dump", full)
    with pytest.raises(DiskFull, match=f"no space left on device writing {path} "):
        write_status(path, {"state": "failed"})
    monkeypatch.undo()
    assert read_status(path)["state"] == "running"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]   # no temporary file left


def test_monitor_sinks_on_a_full_disk_raise_one_line_and_finish_writes_what_it_can(tmp_path):
    paths = create_run_dir(tmp_path / "run")
    os.symlink("/dev/full", paths.events)    # every write to events.jsonl fails with ENOSPC
    monitor = Monitor(paths, new_status("pretrain", 10))
    with pytest.raises(DiskFull, match="events.jsonl"):
        monitor.emit("log", "pretrain", 1, level="info", message="hello")
    assert monitor.finish("failed", "no space left on device writing ...", ended=0.0) == ["events.jsonl", "events.jsonl"]
    assert read_status(paths.status)["state"] == "failed"          # status.json could still be written
    assert "ERROR   [pretrain] error: no space left" in paths.log.read_text()


def test_checkpoint_write_on_a_full_disk_leaves_nothing_partial(tmp_path, monkeypatch):
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    optimizer.step()
    stage_dir = tmp_path / "checkpoints" / "pretrain"
    save_checkpoint(stage_dir, 4, model, optimizer, {"data": {}}, keep_last=2)
    monkeypatch.setattr(checkpoint, "open", lambda path, mode="r": FillingFile(path, mode, room=2000), raising=False)
    with pytest.raises(DiskFull, match="checkpoints/pretrain/step-8 "):
        save_checkpoint(stage_dir, 8, model, optimizer, {"data": {}}, keep_last=2)
    assert sorted(p.name for p in stage_dir.iterdir()) == ["step-4"]
    assert checkpoint.verify_checkpoint(checkpoint.latest_checkpoint(stage_dir)).status == "ok"


def test_final_model_write_on_a_full_disk_leaves_nothing_partial(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))

    class FullTokenizer:
        def save_pretrained(self, path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    final = tmp_path / "final" / "pretrain"
    with pytest.raises(DiskFull, match="final/pretrain "):
        save_final(final, model, FullTokenizer(), {"stage": "pretrain"})
    assert list((tmp_path / "final").iterdir()) == []


def _fake_checkpoint(stage_dir: Path, step: int, size: int) -> None:
    d = stage_dir / f"step-{step}"
    d.mkdir(parents=True)
    for name in checkpoint.FILES:
        (d / name).write_bytes(b"\0" * (size // len(checkpoint.FILES)))
    write_manifest(d)


def test_low_space_alert_before_a_checkpoint_once_per_change(tmp_path, monkeypatch):
    paths = create_run_dir(tmp_path / "run")
    stage_dir = paths.checkpoints("pretrain")
    monitor = Monitor(paths, new_status("pretrain", 10))
    assert checkpoint.low_space_message(stage_dir) is None                 # nothing to measure yet
    _fake_checkpoint(stage_dir, 4, 4000)
    free = {"bytes": 100_000}
    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: free["bytes"])
    assert checkpoint.low_space_message(stage_dir) is None                 # room for 25
    for step, room_bytes in ((8, 9000), (12, 9000), (16, 3000), (20, 100_000), (24, 9000)):
        free["bytes"] = room_bytes
        checkpoint.warn_low_space(monitor, "pretrain", step, stage_dir)
    monitor.close()
    alerts = read_events(paths.events, ("alert",))
    assert [(a["step"], a["level"], a["code"]) for a in alerts] == [
        (8, "warning", "disk_space_low"), (16, "error", "disk_space_low"), (24, "warning", "disk_space_low")]
    assert alerts[0]["message"].startswith("room for only 2 more checkpoints: 8.8 KiB free on the filesystem of ")
    assert alerts[1]["message"].startswith("the next checkpoint will not fit: 2.9 KiB free")


def test_system_samples_carry_the_free_disk_space(tmp_path):
    sample = SystemSampler(disk_path=tmp_path).sample(cpu=False)
    assert abs(sample["disk_free_gb"] - shutil.disk_usage(tmp_path).free / 2 ** 30) < 0.5
    assert "disk_free_gb" not in SystemSampler().sample(cpu=False)


def test_a_run_reports_disk_free_gb_in_its_system_events(tmp_path):
    from tests.helpers import run_in_process, tiny_config

    run_dir = tmp_path / "run"
    assert run_in_process(tiny_config("train.steps=3", "checkpoint.every=0", "monitor.system_every_s=0.1"),
                          run_dir) == 0
    system = read_events(run_dir / "events.jsonl", ("system",))
    assert system and all(e["metrics"]["disk_free_gb"] > 0 for e in system)
    assert json.loads((run_dir / "status.json").read_text())["pid_started"] > 0
