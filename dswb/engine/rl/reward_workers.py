"""Reward functions in worker processes, under a time limit: a call that hangs, raises or kills its
process costs the completions of that call (unscorable), never the run (docs/rewards.md).

A `RewardPool` holds `rewards_workers` processes, each started fresh (`python -m
dswb.engine.rl.reward_calls`, which runs them: nothing forked from the trainer, which has started
torch; nothing here imports torch). Each worker
loads the stage's functions once (a user's `module:function` / `file.py:function`, the built-in
`format` / `math` rules), then answers calls. A batch is cut into one consecutive chunk per worker;
each chunk's call has `timeout_s`:
- past the limit: the worker is killed (with its process group) and replaced, the chunk unscorable;
- an exception: the chunk unscorable, its error kept (type and first line); a rule is called row
  by row, so an error costs only its row;
- the worker dies (os._exit, a signal, a crash): the chunk unscorable, the worker replaced;
- a wrong number of values, or values that are not numbers or None: `UserError`.

The protocol and the worker's loop: `dswb.engine.rl.reward_calls`. Workers run in their own
session (a Ctrl-C in the terminal is the trainer's to handle).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

from dswb.engine.rl.reward_calls import CallResult, FunctionSpec, take_frame, write_frame
from dswb.errors import UserError

START_TIMEOUT_S = 120.0      # a worker imports the user's module (which may import heavy libraries)
CLOSE_TIMEOUT_S = 2.0


# -- the trainer's side -------------------------------------------------------------------------

class Worker:
    """One worker process as the pool sees it: its pipes and the bytes read so far."""

    def __init__(self, setup: dict) -> None:
        root = str(Path(__file__).resolve().parents[3])   # the directory holding the dswb package
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen([sys.executable, "-m", "dswb.engine.rl.reward_calls"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, start_new_session=True, close_fds=True)
        self.buffer = bytearray()
        self.ready = False
        self.started = time.monotonic()
        self.send(setup)

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, message: Any) -> bool:
        """False when the worker is gone (its pipe is broken or closed)."""
        try:
            write_frame(self.proc.stdin, message)
            return True
        except (OSError, ValueError):
            return False

    def receive(self) -> tuple[bool, Any]:
        """After `select` says readable: (True, message) for a whole frame, (False, None) for a part
        of one; EOFError when the worker has gone."""
        data = os.read(self.fileno(), 1 << 20)
        if not data:
            raise EOFError
        self.buffer += data
        return take_frame(self.buffer)

    def wait_message(self, deadline: float) -> Any:
        """The next message, or TimeoutError at `deadline` (monotonic), EOFError if the worker goes."""
        done, message = take_frame(self.buffer)
        while not done:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self], [], [], left)[0]:
                raise TimeoutError
            done, message = self.receive()
        return message

    def death(self) -> str:
        code = self.proc.wait()
        if code < 0:
            try:
                return f"worker died (signal {signal.Signals(-code).name})"
            except ValueError:
                return f"worker died (signal {-code})"
        return f"worker died (exit code {code})"

    def kill(self) -> None:
        _kill(self.proc)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # its own session: children of the user's code too
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        try:
            pipe.close()
        except OSError:
            pass


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        _kill(proc)


def chunk_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """`n` rows cut into at most `parts` nearly equal consecutive (lo, hi) ranges, none empty."""
    parts = max(1, min(parts, n))
    size, extra = divmod(n, parts)
    bounds, lo = [], 0
    for k in range(parts):
        hi = lo + size + (1 if k < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return [b for b in bounds if b[1] > b[0]]


class RewardPool:
    """`workers` processes that run `functions` (key -> spec) under `timeout_s` per call."""

    def __init__(self, functions: dict[str, FunctionSpec], workers: int, timeout_s: float, where: str,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.functions, self.timeout_s, self.where = functions, timeout_s, where
        self.start_timeout_s = max(start_timeout_s, timeout_s)
        self.setup = {"sys_path": list(sys.path), "functions": functions}
        self.procs: list[subprocess.Popen] = []   # every process started, for the finaliser
        self._finalizer = weakref.finalize(self, _kill_all, self.procs)
        self.workers: list[Worker] = []
        try:
            self.workers = [self._start() for _ in range(workers)]
            for worker in self.workers:
                self._ensure_ready(worker)
        except BaseException:
            self.close()
            raise

    def _start(self) -> Worker:
        worker = Worker(self.setup)
        self.procs.append(worker.proc)
        return worker

    def _ensure_ready(self, worker: Worker) -> None:
        if worker.ready:
            return
        try:
            kind, detail = worker.wait_message(worker.started + self.start_timeout_s)
        except TimeoutError:
            worker.kill()
            raise UserError(f"{self.where}: a reward worker did not start within {self.start_timeout_s:g} s "
                            f"(loading the reward functions)") from None
        except EOFError:
            raise UserError(f"{self.where}: a reward worker exited while starting: {worker.death()} "
                            f"(run the stage with rewards_workers = 0 to see why)") from None
        if kind == "load_error":
            worker.kill()
            raise UserError(detail)
        worker.ready = True

    def _replace(self, index: int) -> None:
        self.workers[index].kill()
        self.procs.remove(self.workers[index].proc)
        self.workers[index] = self._start()

    def call(self, key: str, batch: dict[str, list], settings: dict | None = None) -> CallResult:
        """`functions[key]` on every row of `batch` (column -> one value per row), chunked across the
        workers; `settings` go to every chunk's call as keyword arguments."""
        if not self.workers:
            raise RuntimeError("the reward pool is closed")
        n = len(batch["completions"])
        result = CallResult([None] * n, [False] * n)
        pending: dict[int, tuple[int, int, float]] = {}    # worker index -> (lo, hi, deadline)
        try:
            for index, (lo, hi) in enumerate(chunk_bounds(n, len(self.workers))):
                worker = self.workers[index]
                self._ensure_ready(worker)
                chunk = {column: values[lo:hi] for column, values in batch.items()}
                if worker.send(("call", key, chunk, settings or {})):
                    pending[index] = (lo, hi, time.monotonic() + self.timeout_s)
                else:
                    self._fail(result, index, lo, hi, worker.death())
            invalid = self._collect(pending, result)
        except BaseException:   # interrupted: a late answer must not be read as the next call's
            for index in pending:
                self._replace(index)
            raise
        if invalid:
            spec = self.functions[key]
            raise UserError(f"{spec.where}: reward function '{spec.name}' {invalid[0]}")
        return result

    def _collect(self, pending: dict[int, tuple[int, int, float]], result: CallResult) -> list[str]:
        """Wait for every pending chunk (removed from `pending` as it ends) until its deadline; the
        texts of the "invalid" answers."""
        invalid: list[str] = []
        while pending:
            now = time.monotonic()
            for index in [i for i, (_, _, deadline) in pending.items() if deadline <= now]:
                lo, hi, _ = pending.pop(index)
                self._fail(result, index, lo, hi, f"TimeoutError: no result within {self.timeout_s:g} s "
                                                  f"(worker killed)")
            if not pending:
                break
            wait = min(deadline for _, _, deadline in pending.values()) - now
            for worker in select.select([self.workers[i] for i in pending], [], [], max(wait, 0.0))[0]:
                index = self.workers.index(worker)
                lo, hi, _ = pending[index]
                try:
                    done, reply = worker.receive()
                except EOFError:
                    del pending[index]
                    self._fail(result, index, lo, hi, worker.death())
                    continue
                if not done:
                    continue
                del pending[index]
                if reply[0] == "ok":
                    result.values[lo:hi], result.failed[lo:hi] = reply[1], reply[2]
                    result.error = result.error or reply[3]
                elif reply[0] == "error":
                    result.failed[lo:hi] = [True] * (hi - lo)
                    result.error = result.error or reply[1]
                else:
                    invalid.append(reply[1])
        return invalid

    def _fail(self, result: CallResult, index: int, lo: int, hi: int, error: str) -> None:
        """Rows lo:hi unscorable because their worker failed (it is replaced)."""
        result.failed[lo:hi] = [True] * (hi - lo)
        result.error = result.error or error
        self._replace(index)

    def close(self) -> None:
        """Ask every worker to leave; kill those that do not within CLOSE_TIMEOUT_S."""
        for worker in self.workers:
            worker.send(("close",))
            try:
                worker.proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for worker in self.workers:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.workers = []
        self._finalizer()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
