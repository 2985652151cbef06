"""Reward functions in worker processes, under a time limit: a call that hangs, raises or kills its
process costs the completions of that call (unscorable), never the run (docs/rewards.md).

A `RewardPool` holds `rewards_workers` processes, each started fresh (`python -m` this module:
nothing forked from the trainer, which has started torch; nothing here imports torch). Each worker
loads the stage's functions once (a user's `module:function` / `file.py:function`, the built-in
`format` / `math` rules), then answers calls. A batch is cut into one consecutive chunk per worker;
each chunk's call has `timeout_s`:
- past the limit: the worker is killed (with its process group) and replaced, the chunk unscorable;
- an exception: the chunk unscorable, its error kept (type and first line); a rule is called row
  by row, so an error costs only its row;
- the worker dies (os._exit, a signal, a crash): the chunk unscorable, the worker replaced;
- a wrong number of values, or values that are not numbers or None: `UserError`.

The protocol: length-prefixed pickles on the worker's own copies of stdin and stdout; its fd 1
then points at stderr, so a user's `print` shows in the trainer's log and cannot corrupt a frame.
Workers run in their own session (a Ctrl-C in the terminal is the trainer's to handle) and leave
when the trainer goes: end of input, or a parent that changed.
"""

from __future__ import annotations

import importlib
import importlib.util
import numbers
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dswb.errors import UserError

FRAME = struct.Struct(">Q")
START_TIMEOUT_S = 120.0      # a worker imports the user's module (which may import heavy libraries)
CLOSE_TIMEOUT_S = 2.0
ERROR_TEXT_LIMIT = 200
PARENT_CHECK_S = 1.0


@dataclass(frozen=True)
class FunctionSpec:
    """A reward function a worker loads: a user's (`kind` "python", `target` "module:function" or
    "file.py:function") or a built-in rule (`kind` "rule", `target` "format" / "math")."""

    kind: str
    target: str
    where: str   # the config key, for messages: `grpo.rewards[1]`

    @property
    def name(self) -> str:
        return self.target.rpartition(":")[2]


@dataclass
class CallResult:
    """The scores of one batch: `values[i]` None where the function gave None (does not apply) or
    where row i is unscorable (`failed[i]`); `error`: the first failure's text, "" if none."""

    values: list[float | None]
    failed: list[bool]
    error: str = ""


# -- loading and calling (both sides) -----------------------------------------------------------

def load_function(spec: str, where: str) -> Callable:
    """Import `module:function` (from the working directory or installed) or `file.py:function`."""
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser()
            if not path.is_file():
                raise UserError(f"{where}: no such file: {path}")
            module_spec = importlib.util.spec_from_file_location(f"dswb_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            cwd = str(Path.cwd())
            added = cwd not in sys.path
            if added:
                sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(target)
            finally:
                if added:
                    sys.path.remove(cwd)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"{where}: cannot import '{target}': {exc}") from None
    except Exception as exc:  # the user's module failed while importing
        raise UserError(f"{where}: importing '{target}' raised {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"{where}: '{target}' has no function '{name}'")
    return fn


def load_spec(spec: FunctionSpec) -> Callable:
    if spec.kind == "rule":
        from dswb.engine.rl import reward_rules

        if spec.target == "math":
            try:
                reward_rules.math_verify()
            except ImportError as exc:
                raise UserError(f"{spec.where}: {exc}") from None
        return reward_rules.BATCH_RULES[spec.target]
    return load_function(spec.target, spec.where)


def error_text(exc: BaseException) -> str:
    """`Type: first line of the message`, at most ERROR_TEXT_LIMIT characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    return text[:ERROR_TEXT_LIMIT]


def checked_values(values: Any, n: int) -> list[float | None]:
    """The n values a reward function returned, as floats (None kept); ValueError when they are
    not a list of n numbers or None (a bool is not a number)."""
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"must return a list of {n} numbers, got {got}")
    out: list[float | None] = []
    for v in values:
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
            raise ValueError(f"returned {v!r:.60}, not a number")
        out.append(None if v is None else float(v))
    return out


def call_rows(fn: Callable, batch: dict[str, list], settings: dict) -> CallResult:
    """A built-in rule called row by row: an error costs its row only."""
    n = len(batch["completions"])
    values: list[float | None] = [None] * n
    failed = [False] * n
    error = ""
    for i in range(n):
        try:
            values[i] = checked_values(fn(**{k: v[i:i + 1] for k, v in batch.items()}, **settings), 1)[0]
        except Exception as exc:
            failed[i] = True
            error = error or error_text(exc)
    return CallResult(values, failed, error)


def run_call(spec: FunctionSpec, fn: Callable, batch: dict[str, list], settings: dict) -> tuple:
    """A worker's answer to one call, in plain types: ("ok", values, failed, error), ("error", text)
    or ("invalid", text)."""
    if spec.kind == "rule":
        result = call_rows(fn, batch, settings)
        return "ok", result.values, result.failed, result.error
    n = len(batch["completions"])
    try:
        values = fn(**batch, **settings)
    except (Exception, SystemExit) as exc:
        return "error", error_text(exc)
    try:
        return "ok", checked_values(values, n), [False] * n, ""
    except ValueError as exc:
        return "invalid", str(exc)


# -- frames -------------------------------------------------------------------------------------

def write_frame(stream, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(FRAME.pack(len(data)) + data)
    stream.flush()


def read_frame(stream) -> Any:
    """The next message; EOFError at the end of the stream."""
    header = stream.read(FRAME.size)
    if len(header) < FRAME.size:
        raise EOFError
    size = FRAME.unpack(header)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def take_frame(buffer: bytearray) -> tuple[bool, Any]:
    """(True, message) when `buffer` starts with a whole frame (removed from it), else (False, None)."""
    if len(buffer) < FRAME.size:
        return False, None
    size = FRAME.unpack(buffer[:FRAME.size])[0]
    if len(buffer) < FRAME.size + size:
        return False, None
    message = pickle.loads(bytes(buffer[FRAME.size:FRAME.size + size]))
    del buffer[:FRAME.size + size]
    return True, message


# -- the worker process -------------------------------------------------------------------------

def serve() -> None:
    """A worker's life: setup (sys.path, the functions to load), then one answer per call until
    the input ends or a `close` comes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inbox = os.fdopen(os.dup(0), "rb")
    outbox = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)    # the user's prints go to stderr, never into a frame
    _leave_with_parent(os.getppid())
    setup = read_frame(inbox)
    sys.path[:] = setup["sys_path"]
    specs: dict[str, FunctionSpec] = setup["functions"]
    try:
        functions = {key: load_spec(spec) for key, spec in specs.items()}
    except UserError as exc:
        write_frame(outbox, ("load_error", str(exc)))
        return
    write_frame(outbox, ("ready", os.getpid()))
    while True:
        try:
            message = read_frame(inbox)
        except EOFError:
            return
        if message[0] == "close":
            return
        _, key, batch, settings = message
        write_frame(outbox, run_call(specs[key], functions[key], batch, settings))


def _leave_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


# -- the trainer's side -------------------------------------------------------------------------

class Worker:
    """One worker process as the pool sees it: its pipes and the bytes read so far."""

    def __init__(self, setup: dict) -> None:
        root = str(Path(__file__).resolve().parents[3])   # the directory holding the dswb package
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen([sys.executable, "-m", "dswb.engine.rl.reward_workers"], stdin=subprocess.PIPE,
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


if __name__ == "__main__":   # run as the module itself, so that pickled classes name one module
    from dswb.engine.rl.reward_workers import serve as serve_here

    serve_here()
