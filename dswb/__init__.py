"""dswb: a training workbench for language models in the DeepSeek style.

The package is split by import weight: `dswb.config`, `dswb.rundir`, `dswb.stats` and
`dswb.errors` are standard-library only and shared by everything; `dswb.engine` holds the
PyTorch/transformers code; `dswb.tui` holds the Textual dashboard; `dswb.cli` the commands.
"""

__version__ = "0.1.0"
