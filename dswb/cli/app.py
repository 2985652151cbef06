"""Root of the `dswb` CLI: attaches one Typer sub-app or command per module.

`dswb` with no command opens the dashboard. Importing this module must stay cheap (no torch,
no transformers, no textual): `dswb --help` should answer instantly.
"""

from __future__ import annotations

import os
import sys

import typer

from dswb import __version__
from dswb.cli import bench_cmd, eval_cmd, plan_cmd, presets_cmd, run_cmd, runs_cmd, tui_cmd, watch_cmd
from dswb.cli import data_cmd, export_cmd
from dswb.errors import EXIT_USER_ERROR, UserError

app = typer.Typer(
    name="dswb",
    help="Training workbench for language models in the DeepSeek style.\n\n"
         "Run `dswb` alone to open the dashboard, or `dswb run presets/demo.toml` to train headless.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dswb {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(ctx: typer.Context,
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    if ctx.invoked_subcommand is None:
        tui_cmd.tui()


app.command("run")(run_cmd.run)
app.command("plan")(plan_cmd.plan)
app.add_typer(presets_cmd.app, name="presets")
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(data_cmd.app, name="data")
app.command("watch")(watch_cmd.watch)
app.command("eval")(eval_cmd.eval_model)
app.command("export")(export_cmd.export)
app.command("bench")(bench_cmd.bench)
app.command("tui")(tui_cmd.tui)


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)
