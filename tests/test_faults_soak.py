"""`dswb bench faults` on a few trials: kills inside a checkpoint write and during data
preparation, and a SIGTERM, each resumed to the end, must end bitwise equal to the uninterrupted
run (the full soak, 20 trials, is `dswb bench faults`)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_fault_soak_with_three_trials_ends_bitwise_equal():
    from dswb.bench.faults import format_table, run

    result = run(trials=3)
    table = format_table(result)
    assert [r["kind"] for r in result["results"]] == ["checkpoint", "data", "sigterm"], table
    assert all(r["landed"] for r in result["results"]), table        # each fault hit what it aimed at
    assert result["bitwise_equal"] == 3, table
    assert all(r["verified"] and not r["leftovers"] and r["state"] == "finished" for r in result["results"]), table
    assert result["results"][2]["clean_stop"], table                   # SIGTERM: exit 130, state stopped
    assert "3/3 trials ended bitwise equal" in table


def test_trials_is_refused_by_a_benchmark_without_trials():
    result = subprocess.run([sys.executable, "-m", "dswb", "bench", "batching", "--trials", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error: benchmark 'batching' takes no --trials" in result.stderr
