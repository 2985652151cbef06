"""dswb: a training workbench for language models in the DeepSeek style.

The package is laid out by layer (the README's Development section draws them; tests/test_layers.py
enforces them): `dswb.util` (standard library only), `dswb.errors`, `dswb.stats`, `dswb.config`
and `dswb.rundir` are light and shared by everything; `dswb.engine` holds the PyTorch /
transformers code; `dswb.tui` the Textual dashboard; `dswb.bench` the benchmarks; `dswb.cli` the
commands.
"""

__version__ = "0.1.0"
