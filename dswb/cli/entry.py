"""The `dswb` executable (console script and `python -m dswb`): the dashboard's fast path, else the CLI.

`dswb` alone and `dswb tui ...` are what a user waits on to see a frame, so they import only the
dashboard's command, not every command module that `dswb.cli.app` attaches (half of the CLI's import
time: about 0.1 s on 2 cores). Everything else, `--help` and `--version` included, goes to
`dswb.cli.app.main`.
"""

from __future__ import annotations

import os
import sys

FULL_CLI_FLAGS = ("-h", "--help", "--version")


def opens_dashboard(args: list[str]) -> bool:
    """Whether these arguments only open the dashboard (`dswb`, `dswb tui [OPTIONS]`)."""
    return (not args or args[0] == "tui") and not any(a in FULL_CLI_FLAGS for a in args)


def main() -> None:
    args = sys.argv[1:]
    if not opens_dashboard(args):
        from dswb.cli.app import main as cli_main

        cli_main()
        return
    import typer

    from dswb.cli import tui_cmd
    from dswb.errors import EXIT_USER_ERROR, UserError

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    dashboard = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    dashboard.command()(tui_cmd.tui)   # the only command: Typer runs it without a name
    try:
        dashboard(args=args[1:], prog_name="dswb tui")
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)
