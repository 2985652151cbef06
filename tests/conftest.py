"""Shared test setup: offline, quiet, small. No test needs a network, a GPU or a model hub."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("DSWB_RUNS_ROOT", None)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A finished tiny pretraining run without tracker sinks, made in a fresh directory (the sinks' tests
    export it after the fact)."""
    from tests.helpers import run_in_process, tiny_config

    base = tmp_path_factory.mktemp("plain")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        assert run_in_process(tiny_config(), base / "run") == 0
    return base / "run"
