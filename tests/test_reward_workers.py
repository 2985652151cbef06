"""The reward workers against hostile functions: one that never returns, raises, kills its own
process, returns the wrong number of values or strings. Each costs the completions of its call
(unscorable, with the error kept) or stops the stage with one `UserError` line, and the pool scores
the next call. Workers start fresh (no torch), leave with the trainer, and a user's `print` cannot
corrupt the protocol."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dswb.config.posttrain import RLSettings
from dswb.engine.rl.reward_calls import FunctionSpec, checked_values
from dswb.engine.rl.reward_workers import RewardPool, chunk_bounds
from dswb.engine.rl.rewards import RewardInputs, build_rewards
from dswb.errors import UserError

HOSTILE = '''
import os, sys, time

def ok(prompts, completions, **kw):
    print("a print of the user's that must not reach the protocol")
    sys.stdout.buffer.write(b"raw bytes on fd 1")
    return [float(len(c)) if c else None for c in completions]

def sleeps(completions, **kw):
    time.sleep(3600)

def raises(completions, **kw):
    raise KeyError("answer")

def raises_on_bad(completions, **kw):
    if "bad" in completions:
        raise ValueError("cannot score 'bad'\\nsecond line of the message")
    return [1.0] * len(completions)

def exits(completions, **kw):
    os._exit(3)

def kills_itself(completions, **kw):
    os.kill(os.getpid(), 9)

def short(completions, **kw):
    return [1.0] * (len(completions) - 1)

def strings(completions, **kw):
    return ["1.0"] * len(completions)

def bools(completions, **kw):
    return [True] * len(completions)

def torch_loaded(completions, **kw):
    return [float("torch" in sys.modules)] * len(completions)

def pid(completions, **kw):
    return [float(os.getpid())] * len(completions)
'''
NAMES = ["ok", "sleeps", "raises", "raises_on_bad", "exits", "kills_itself", "short", "strings", "bools",
         "torch_loaded", "pid"]
TIMEOUT_S = 1.0


def batch(completions: list[str]) -> dict[str, list]:
    n = len(completions)
    return {"prompts": ["1+1="] * n, "completions": completions, "completion_ids": [[1]] * n, "ended": [True] * n}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rewards") / "hostile.py"
    path.write_text(HOSTILE)
    return path


@pytest.fixture(scope="module")
def pool(hostile):
    functions = {n: FunctionSpec("python", f"{hostile}:{n}", f"grpo.rewards[{i}]") for i, n in enumerate(NAMES)}
    with RewardPool(functions, workers=2, timeout_s=TIMEOUT_S, where="grpo.rewards") as p:
        yield p


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:   # a zombie is not alive
        return f.read().split(")")[-1].split()[0] != "Z"


def test_scores_come_back_in_order_and_prints_do_not_corrupt_the_protocol(pool):
    got = pool.call("ok", batch(["a", "bb", "", "dddd", "eeeee"]))
    assert got.values == [1.0, 2.0, None, 4.0, 5.0] and not any(got.failed) and got.error == ""


def test_workers_never_import_torch(pool):
    assert pool.call("torch_loaded", batch(["a", "b"])).values == [0.0, 0.0]
    code = ("import sys, dswb.engine.rl.reward_calls, dswb.engine.rl.reward_workers, dswb.engine.rl.reward_rules; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_a_call_past_the_time_limit_is_unscorable_and_its_worker_replaced(pool):
    before = set(pool.call("pid", batch(["a", "b"])).values)
    start = time.monotonic()
    got = pool.call("sleeps", batch(["a", "b", "c"]))
    assert TIMEOUT_S <= time.monotonic() - start < TIMEOUT_S + 2
    assert got.failed == [True] * 3 and got.values == [None] * 3
    assert got.error.startswith("TimeoutError: no result within 1 s")
    after = set(pool.call("pid", batch(["a", "b"])).values)
    assert not before & after and not any(alive(int(p)) for p in before)
    assert pool.call("ok", batch(["xy"])).values == [2.0]


@pytest.mark.parametrize("name, error", [
    ("raises", "KeyError: 'answer'"),
    ("exits", "worker died (exit code 3)"),
    ("kills_itself", "worker died (signal SIGKILL)"),
])
def test_a_raising_or_dying_function_leaves_its_call_unscorable(pool, name, error):
    got = pool.call(name, batch(["a", "b", "c", "d"]))
    assert got.failed == [True] * 4 and got.error == error
    assert pool.call("ok", batch(["abc", "d"])).values == [3.0, 1.0]   # the pool goes on


def test_only_the_failing_chunk_is_unscorable(pool):
    got = pool.call("raises_on_bad", batch(["a", "b", "bad", "c"]))     # chunks [a, b] and [bad, c]
    assert got.failed == [False, False, True, True] and got.values[:2] == [1.0, 1.0]
    assert got.error == "ValueError: cannot score 'bad'"                # type and first line


@pytest.mark.parametrize("name, message", [
    ("short", "grpo.rewards[6]: reward function 'short' must return a list of 2 numbers, got 1 values"),
    ("strings", "grpo.rewards[7]: reward function 'strings' returned '1.0', not a number"),
    ("bools", "grpo.rewards[8]: reward function 'bools' returned True, not a number"),
])
def test_wrong_values_are_one_line_user_errors(pool, name, message):
    with pytest.raises(UserError) as err:
        pool.call(name, batch(["a", "b", "c", "d"]))
    assert str(err.value) == message
    assert pool.call("ok", batch(["ab"])).values == [2.0]


def test_an_interrupted_call_leaves_no_late_answer_for_the_next(pool, monkeypatch):
    import select

    real, calls = select.select, []

    def interrupted(*args):
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(select, "select", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool.call("ok", batch(["a", "b"]))
    monkeypatch.undo()
    assert pool.call("ok", batch(["abc", "d"])).values == [3.0, 1.0]


def test_checked_values():
    assert checked_values([1, 2.5, None, float("nan")], 4)[:3] == [1.0, 2.5, None]
    with pytest.raises(ValueError, match="got str"):
        checked_values("1", 1)
    assert chunk_bounds(5, 2) == [(0, 3), (3, 5)] and chunk_bounds(1, 4) == [(0, 1)]


@pytest.mark.parametrize("spec, message", [
    ("{dir}/none.py:f", "grpo.rewards[0]: no such file"),
    ("{dir}/hostile.py:missing", "grpo.rewards[0]: '{dir}/hostile.py' has no function 'missing'"),
    ("{dir}/broken.py:f", "grpo.rewards[0]: cannot import '{dir}/broken.py': No module named 'not_a_module_anywhere'"),
])
def test_loading_errors_in_a_worker_are_user_errors_at_start(hostile, spec, message):
    (hostile.parent / "broken.py").write_text("import not_a_module_anywhere\n")
    functions = {"f": FunctionSpec("python", spec.format(dir=hostile.parent), "grpo.rewards[0]")}
    with pytest.raises(UserError) as err:
        RewardPool(functions, workers=1, timeout_s=TIMEOUT_S, where="grpo.rewards")
    assert str(err.value).startswith(message.format(dir=hostile.parent)) and "\n" not in str(err.value)


def test_close_and_the_finaliser_leave_no_process(hostile):
    functions = {"pid": FunctionSpec("python", f"{hostile}:pid", "w")}
    pool = RewardPool(functions, workers=2, timeout_s=TIMEOUT_S, where="w")
    pids = [int(p) for p in pool.call("pid", batch(["a", "b"])).values]
    pool.close()
    assert not any(alive(p) for p in pids)
    pool = RewardPool(functions, workers=1, timeout_s=TIMEOUT_S, where="w")
    pid = int(pool.call("pid", batch(["a"])).values[0])
    del pool
    gc.collect()
    assert not alive(pid)


def test_a_busy_worker_leaves_when_the_trainer_dies(hostile):
    """The trainer killed mid-call: its worker, stuck in the user's function, notices its parent is
    gone and exits."""
    script = textwrap.dedent(f"""
        import os, sys
        from dswb.engine.rl.reward_calls import FunctionSpec
        from dswb.engine.rl.reward_workers import RewardPool
        pool = RewardPool({{"sleeps": FunctionSpec("python", "{hostile}:sleeps", "w")}}, 1, 60.0, "w")
        worker = pool.workers[0]
        worker.send(("call", "sleeps", {{"completions": ["a"]}}, {{}}))
        print(worker.proc.pid, flush=True)
        os.kill(os.getpid(), 9)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


def test_build_rewards_runs_functions_and_rules_in_the_workers(hostile):
    section = RLSettings(rewards=["format", "math", f"{hostile}:raises_on_bad"], rewards_workers=2,
                         rewards_timeout_s=TIMEOUT_S)
    combined = build_rewards(section.rewards, [], "grpo.rewards", run_rm=None, place=lambda m: m, section=section)
    try:
        assert combined.pool is not None and len(combined.pool.workers) == 2
        completions = ["<think>x</think>\\frac{1}{2}", "x</think>0.5", "bad", "<think>y"]
        got = combined(RewardInputs(prompts=["p"] * 4, completions=completions, completion_ids=[[1]] * 4,
                                    ended=[True] * 4, columns={"answer": ["0.5"] * 4},
                                    think_open=[False, True, False, False], max_new_tokens=8))
        assert got.per_source["format"].tolist() == [1.0, 1.0, 0.0, 0.0]
        assert got.per_source["math"].tolist() == [1.0, 1.0, 0.0, 0.0]
        assert got.unscorable_counts() == {"format": 0, "math": 0, "raises_on_bad": 2}
        assert got.errors == {"raises_on_bad": "ValueError: cannot score 'bad'"}
        assert got.total[:2].tolist() == [3.0, 3.0] and all(math.isnan(t) for t in got.total[2:].tolist())
    finally:
        combined.close()
    assert combined.pool is None


def test_the_trainer_still_checks_a_function_before_starting_workers(tmp_path):
    section = RLSettings(rewards=[f"{tmp_path}/none.py:f"], rewards_workers=1)
    with pytest.raises(UserError, match=r"grpo.rewards\[0\]: no such file"):
        build_rewards(section.rewards, [], "grpo.rewards", run_rm=None, place=lambda m: m, section=section)


def test_missing_math_verify_is_one_line_with_the_install_hint(monkeypatch):
    import importlib.util

    import dswb.engine.rl.reward_rules as rules

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else real(name, *a))
    section = RLSettings(rewards=["math"], rewards_workers=1)
    with pytest.raises(UserError, match=r"grpo.rewards\[0\]: the math reward needs the math-verify package: "
                                        r"pip install 'dswb\[math\]'"):
        build_rewards(["math"], [], "grpo.rewards", run_rm=None, place=lambda m: m, section=section)
    rules.math_verify.cache_clear()
    monkeypatch.setitem(sys.modules, "math_verify", None)   # import math_verify raises ImportError
    with pytest.raises(UserError, match="math-verify package"):
        build_rewards(["math"], [], "grpo.rewards", run_rm=None, place=lambda m: m,
                      section=RLSettings(rewards=["math"], rewards_workers=0))
    rules.math_verify.cache_clear()
