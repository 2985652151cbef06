"""`dswb bench faults`: a fault soak. Kill a small run at random moments, resume it, and count
the trials that end bitwise equal to the same run left alone.

The run is `presets/smoke.toml` shortened (24 steps, a checkpoint every 4, evaluation at step 12,
one thread). First an uninterrupted reference run; then each trial starts the same run in its own
directory (and its own data cache, so data preparation really happens), hits it with one fault,
resumes it with `dswb run --resume` until it finishes, and compares: the final model's tensors
and the loss of every step (including steps replayed after the resume) must equal the
reference's exactly, `dswb runs verify` must pass and no temporary directory may be left.

Faults, in turn (`KINDS`): `kill -9` inside a checkpoint write (while a `.tmp-step-*` directory
exists), during data preparation (after "preparing data", before the data is ready; half the
time while the cache entry's temporary directory exists), at a random step, inside the final
model write, and at a random moment after the run started; SIGTERM, SIGINT (Ctrl-C) and
`dswb runs stop` at a random step (these must end `stopped` with exit 130 before the resume).

Test hook: the killed process runs `python -m dswb.bench.faults --child ...` (then `python -m dswb ...`
in the same process), which with
`DSWB_FAULT_SLOWDOWN_S=<seconds>` in its environment sleeps that long after each file of a
checkpoint or final model is fsynced, after each array of a data-cache entry is saved, and
before each temporary directory is renamed into place, so a kill lands inside those writes
reliably. It only adds sleeps; the code that writes is the real one. Nothing else reads it.
"""

from __future__ import annotations

import os
import random
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLOWDOWN_ENV = "DSWB_FAULT_SLOWDOWN_S"
KINDS = ("checkpoint", "data", "sigterm", "train", "sigint", "final", "runs-stop", "random")
STEPS = 24
OVERRIDES = [f"train.steps={STEPS}", "train.warmup_steps=4", "checkpoint.every=4", "checkpoint.keep_last=2",
             "eval.every=12", "eval.max_batches=2", "eval.task_samples=8", "task.n_train=600", "task.n_val=40",
             "task.n_test=40", "run.threads=1", "monitor.system_every_s=0.5"]
SLOWDOWN_S = 0.05


# --- the child process (the run being killed) ------------------------------------------------

def install_slowdowns(seconds: float) -> None:
    """The test hook described in the module docstring."""
    import numpy as np

    import dswb.engine.checkpoint.layout as layout   # checkpoints and final models are sealed there

    def after(fn):
        def slowed(*args, **kwargs):
            out = fn(*args, **kwargs)
            time.sleep(seconds)
            return out
        return slowed

    layout._fsync_file = after(layout._fsync_file)
    real_save = np.save

    def save(file, *args, **kwargs):
        out = real_save(file, *args, **kwargs)
        if "/.tmp-" in str(file):
            time.sleep(seconds)
        return out

    np.save = save

    def before_rename(fn):
        def slowed(src, dst, *args, **kwargs):
            if "/.tmp-" in os.fspath(src):
                time.sleep(seconds)
            return fn(src, dst, *args, **kwargs)
        return slowed

    os.replace, os.rename = before_rename(os.replace), before_rename(os.rename)


def child_main(args: list[str]) -> None:
    seconds = float(os.environ.get(SLOWDOWN_ENV) or 0)
    if seconds > 0:
        install_slowdowns(seconds)
    # `python -m dswb ARGS` in this process, after the hooks: the benchmark never imports the CLI.
    sys.argv = ["dswb", *args]
    runpy.run_module("dswb", run_name="__main__", alter_sys=True)


# --- the soak ---------------------------------------------------------------------------------

def _preset() -> Path:
    from dswb.presets import find_preset

    return Path(find_preset("smoke"))


def _start(run_dir: Path, cache: Path, resume: bool, slowdown: float = 0.0) -> subprocess.Popen:
    args = ["run", "--plain", "--quiet"]
    if resume:
        args += ["--resume", str(run_dir)]
    else:
        args += [str(_preset()), "--run-dir", str(run_dir)]
        for item in OVERRIDES + [f"data.cache_dir={cache}"]:
            args += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", SLOWDOWN_ENV: str(slowdown) if slowdown else ""}
    return subprocess.Popen([sys.executable, "-m", "dswb.bench.faults", "--child", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


class Watch:
    """Follows a starting run through its files (events, temporary directories)."""

    def __init__(self, run_dir: Path, cache: Path) -> None:
        from dswb.rundir.events import EventTail

        self.run_dir, self.cache = run_dir, cache
        self.tail = EventTail(run_dir / "events.jsonl")
        self.step, self.logs = 0, []

    def poll(self) -> None:
        for e in self.tail.read_new():
            if e.get("kind") == "metrics" and isinstance(e.get("step"), int):
                self.step = max(self.step, e["step"])
            elif e.get("kind") == "log" and isinstance(e.get("message"), str):
                self.logs.append(e["message"])

    def partial(self, kind: str) -> bool:
        if kind == "checkpoint":
            return any((self.run_dir / "checkpoints" / "pretrain").glob(".tmp-step-*"))
        if kind == "final":
            return any((self.run_dir / "final").glob(".tmp-*"))
        return any(self.cache.glob(".tmp-*"))

    def preparing(self) -> bool:
        return "preparing data" in self.logs and not any(m.startswith("data ready") for m in self.logs)


def _wait(proc: subprocess.Popen, watch: Watch, until, timeout: float = 300.0, every: float = 0.004) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watch.poll()
        if until():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(every)
    return False


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _fault(kind: str, proc: subprocess.Popen, watch: Watch, rng: random.Random, run_s: float) -> dict:
    """Apply one fault to a running process; returns what happened."""
    if kind in ("checkpoint", "final"):
        every = 4   # checkpoint.every in OVERRIDES: aim at the write after a random step
        after = rng.randrange(0, STEPS // every) * every + 1 if kind == "checkpoint" else STEPS - 1
        if not _wait(proc, watch, lambda: watch.step >= after and watch.partial(kind)):
            return {"landed": False}
        time.sleep(rng.uniform(0, 4 * SLOWDOWN_S))
        _kill(proc)
        return {"landed": watch.partial(kind), "step": watch.step}
    if kind == "data":
        inside_write = rng.random() < 0.5
        until = (lambda: watch.partial("data")) if inside_write else watch.preparing
        if not _wait(proc, watch, until, every=0.002):
            return {"landed": False}
        if not inside_write:
            time.sleep(rng.uniform(0, 0.05))
        _kill(proc)
        watch.poll()
        return {"landed": watch.preparing() or watch.partial("data"), "in_cache_write": watch.partial("data")}
    if kind == "random":
        _wait(proc, watch, lambda: (watch.run_dir / "status.json").exists())
        # The reference took run_s in-process; the child also imports the training code after
        # writing status.json, so the first half of run_s lands while it runs.
        time.sleep(rng.uniform(0, run_s / 2))
        running = proc.poll() is None
        _kill(proc)
        watch.poll()
        return {"landed": running, "step": watch.step}
    # `dswb runs stop` is a process of its own that needs a while to start: aim it earlier.
    target = rng.randint(1, STEPS // 2 if kind == "runs-stop" else STEPS - 2)
    if not _wait(proc, watch, lambda: watch.step >= target):
        return {"landed": False}
    if kind == "train":
        _kill(proc)
        return {"landed": True, "step": target}
    if kind == "runs-stop":
        subprocess.run([sys.executable, "-m", "dswb", "runs", "stop", str(watch.run_dir)], capture_output=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    else:
        os.kill(proc.pid, signal.SIGTERM if kind == "sigterm" else signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    from dswb.rundir.status import read_status

    state = (read_status(watch.run_dir / "status.json") or {}).get("state")
    finished_first = proc.returncode == 0 and state == "finished"   # the stop came after the last step
    return {"landed": not finished_first, "step": target, "exit": proc.returncode, "state": state,
            "clean_stop": proc.returncode == 130 and state == "stopped"}


def _losses(run_dir: Path) -> dict[int, list[float]]:
    from dswb.rundir.events import read_events

    out: dict[int, list[float]] = {}
    for e in read_events(run_dir / "events.jsonl", ("metrics",)):
        out.setdefault(e["step"], []).append(e["metrics"].get("loss"))
    return out


def _compare(run_dir: Path, reference: dict, ref_losses: dict[int, list[float]]) -> dict:
    from safetensors.torch import load_file

    from dswb.rundir.manifest import verify_run
    from dswb.rundir.status import read_status

    final = run_dir / "final" / "pretrain" / "model.safetensors"
    weights = load_file(str(final)) if final.exists() else {}
    same_weights = weights.keys() == reference.keys() and all(weights[k].equal(reference[k]) for k in reference)
    losses = _losses(run_dir)
    same_losses = set(losses) == set(ref_losses) and all(set(v) == set(ref_losses[s]) for s, v in losses.items())
    verified = all(v.status == "ok" for v in verify_run(run_dir))
    leftovers = [str(p.relative_to(run_dir)) for p in run_dir.rglob(".tmp-*")]
    state = (read_status(run_dir / "status.json") or {}).get("state")
    return {"bitwise_equal": bool(same_weights and same_losses and state == "finished"), "weights_equal": same_weights,
            "losses_equal": same_losses, "verified": verified, "leftovers": leftovers, "state": state}


def run_trial(kind: str, root: Path, index: int, rng: random.Random, reference: dict,
              ref_losses: dict, run_s: float) -> dict:
    run_dir, cache = root / f"trial-{index:02d}-{kind}", root / f"cache-{index:02d}"
    t0 = time.monotonic()
    proc = _start(run_dir, cache, resume=False, slowdown=SLOWDOWN_S)
    watch = Watch(run_dir, cache)
    fault = _fault(kind, proc, watch, rng, run_s)
    if proc.poll() is None:   # the fault never came (the run ended first): let it finish
        proc.wait()
    resumes, error = 0, None
    from dswb.rundir.status import read_status

    while (read_status(run_dir / "status.json") or {}).get("state") != "finished" and resumes < 3:
        fresh = not (run_dir / "config.toml").exists()   # killed before the run directory was written
        resumed = _start(run_dir, cache, resume=not fresh)
        _, err = resumed.communicate(timeout=600)
        resumes += 1
        if resumed.returncode != 0:
            error = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {resumed.returncode}"]
    result = {"kind": kind, **fault, "resumes": resumes, "seconds": round(time.monotonic() - t0, 1),
              **_compare(run_dir, reference, ref_losses)}
    if kind in ("sigterm", "sigint", "runs-stop") and fault.get("landed"):   # a stop must end `stopped`, 130
        result["bitwise_equal"] = result["bitwise_equal"] and fault.get("clean_stop", False)
    if error:
        result["error"] = error[0][-300:]
    cache_left = [p.name for p in cache.glob(".tmp-*")]
    if cache_left:
        result["cache_leftovers"] = cache_left
    return result


def _reference(ref_dir: Path, cache: Path) -> float:
    """The uninterrupted run, in this process (one interpreter start less); returns how long the
    run took from the moment its status.json existed (the window of a `random` kill)."""
    from dswb.config import load_config
    from dswb.engine.runner import run_training
    from dswb.rundir.layout import create_run_dir

    config = load_config(_preset(), OVERRIDES + [f"data.cache_dir={cache}"])
    t0 = time.monotonic()
    code = run_training(config, create_run_dir(ref_dir))
    if code != 0:
        raise RuntimeError(f"the reference run failed (exit {code}); see {ref_dir / 'train.log'}")
    return time.monotonic() - t0


def run(quick: bool = False, trials: int | None = None, seed: int = 0, keep: bool = False,
        kinds: tuple[str, ...] = KINDS) -> dict:
    """`trials` faults (default 20, `quick` one of each kind), taking `kinds` in turn."""
    from safetensors.torch import load_file

    n = trials if trials is not None else (len(kinds) if quick else 20)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="dswb-faults-"))
    t0 = time.monotonic()
    ref_dir = root / "reference"
    run_s = _reference(ref_dir, root / "cache-reference")
    reference = load_file(str(ref_dir / "final" / "pretrain" / "model.safetensors"))
    ref_losses = _losses(ref_dir)
    results = [run_trial(kinds[i % len(kinds)], root, i, rng, reference, ref_losses, run_s) for i in range(n)]
    equal = sum(r["bitwise_equal"] for r in results)
    if equal == n and not keep:
        shutil.rmtree(root, ignore_errors=True)
    return {"trials": n, "bitwise_equal": equal, "reference_s": round(run_s, 1),
            "seconds": round(time.monotonic() - t0, 1), "steps": STEPS, "slowdown_s": SLOWDOWN_S, "seed": seed,
            "kept": str(root) if root.exists() else None, "results": results}


def format_table(result: dict) -> str:
    rows = [f"{'fault':<12}{'trials':>7}{'landed':>8}{'bitwise =':>11}{'verified':>10}{'seconds':>9}"]
    for kind in KINDS:
        rs = [r for r in result["results"] if r["kind"] == kind]
        if not rs:
            continue
        rows.append(f"{kind:<12}{len(rs):>7}{sum(bool(r['landed']) for r in rs):>8}"
                    f"{sum(r['bitwise_equal'] for r in rs):>11}{sum(r['verified'] for r in rs):>10}"
                    f"{sum(r['seconds'] for r in rs) / len(rs):>9.1f}")
    landed = sum(bool(r["landed"]) for r in result["results"])
    rows.append(f"{result['bitwise_equal']}/{result['trials']} trials ended bitwise equal to the uninterrupted run; "
                f"{landed}/{result['trials']} faults landed where aimed (reference run {result['reference_s']}s, "
                f"soak {result['seconds']}s)")
    for r in result["results"]:
        if not r["bitwise_equal"]:
            rows.append(f"  not equal: {r['kind']} {({k: v for k, v in r.items() if k != 'kind'})}")
    if result.get("kept"):
        rows.append(f"run directories kept in {result['kept']}")
    return "\n".join(rows)


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child_main(sys.argv[2:])
