"""The dashboard's import wall: no torch or transformers on its path, so it starts in well under a second."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from fixtures.tui_support import FIXTURE_RUNS

import dswb.tui

HEAVY = ("torch", "transformers", "tokenizers", "safetensors")

PROBE = """
import json, os, sys
os.environ["DSWB_TUI_FIRST_FRAME"] = "1"
sys.argv = ["dswb", "tui", "--runs-root", sys.argv[1], "--attach", "finished"]
from dswb.cli.app import app
try:
    app()
except SystemExit as exc:
    assert not exc.code, exc.code
import dswb.bench.tui, dswb.tui.synthetic  # the rest of the package
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_opening_the_dashboard_never_imports_torch_or_transformers():
    out = subprocess.run([sys.executable, "-c", PROBE, str(FIXTURE_RUNS)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "first-frame" in out.stdout, "the app drew a frame (headless) and exited"
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "textual" in loaded and "dswb" in loaded
    assert not loaded & set(HEAVY), f"heavy modules on the TUI path: {sorted(loaded & set(HEAVY))}"


def test_no_module_of_the_tui_package_imports_the_engine_or_torch():
    package = Path(dswb.tui.__file__).parent
    pattern = re.compile(r"^\s*(from|import)\s+(torch|transformers|tokenizers|safetensors|dswb\.engine)\b", re.M)
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
