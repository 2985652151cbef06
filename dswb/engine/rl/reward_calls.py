"""What a reward worker runs (and the trainer, with no workers): loading a reward function, calling
it, checking its values; the frame protocol; the worker process's main loop (`serve`).

A worker is started as `python -m dswb.engine.rl.reward_calls` by `dswb.engine.rl.reward_workers`
(the pool, the trainer's side). The protocol: length-prefixed pickles on the worker's own copies of
stdin and stdout; its fd 1 then points at stderr, so a user's `print` shows in the trainer's log and
cannot corrupt a frame. A worker ignores Ctrl-C (the trainer's to handle) and leaves when the
trainer goes: end of input, a `close`, or a parent that changed. Nothing here imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import numbers
import os
import pickle
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dswb.errors import UserError

FRAME = struct.Struct(">Q")
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


if __name__ == "__main__":   # run as the module itself, so that pickled classes name one module
    from dswb.engine.rl.reward_calls import serve as serve_here

    serve_here()
