"""The `dswb` executable (console script and `python -m dswb`): the dashboard's fast path, else the CLI.

`dswb` alone and `dswb tui ...` are what a user waits on to see a frame, so they import only the
dashboard's command, not every command module that `dswb.cli.app` attaches (half of the CLI's import
time: about 0.1 s on 2 cores), and plain `--option value` arguments are read from that command's own
annotations (`quick_options`) rather than by Typer, whose coercion of each parameter imports pydantic
(another 0.1 s). Anything else (`--help`, `--version`, a value out of range, an unknown option) goes to
Typer, which reports errors as every command does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

FULL_CLI_FLAGS = ("-h", "--help", "--version")
PLAIN_TYPES = (Path, str, float, int)


def opens_dashboard(args: list[str]) -> bool:
    """Whether these arguments only open the dashboard (`dswb`, `dswb tui [OPTIONS]`)."""
    return (not args or args[0] == "tui") and not any(a in FULL_CLI_FLAGS for a in args)


def option_table(command: Callable) -> dict[str, tuple[str, type, Any]]:
    """`{flag: (parameter, type, typer OptionInfo)}` for a Typer command's `Annotated[T, typer.Option(...)]`
    parameters whose type is a path, string or number (optional or not)."""
    import typing

    table = {}
    for name, hint in typing.get_type_hints(command, include_extras=True).items():
        info = (getattr(hint, "__metadata__", None) or [None])[0]
        kinds = [k for k in typing.get_args(typing.get_args(hint)[0]) or [typing.get_args(hint)[0]]
                 if k is not type(None)] if info is not None else []
        if len(kinds) != 1 or kinds[0] not in PLAIN_TYPES:
            continue
        for flag in (info.default, *info.param_decls):
            if isinstance(flag, str) and flag.startswith("-"):
                table[flag] = (name, kinds[0], info)
    return table


def quick_options(command: Callable, args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments `args` give `command` (`--opt value`, `--opt=value`), or None when Typer must
    parse them (an unknown option, a missing value, a value of the wrong type or out of range)."""
    table, values, rest = option_table(command), {}, list(args)
    while rest:
        flag, eq, value = rest.pop(0).partition("=")
        if flag not in table or (not eq and not rest):
            return None
        value = value if eq else rest.pop(0)
        name, kind, info = table[flag]
        try:
            parsed = kind(value)
        except ValueError:
            return None
        if kind in (int, float) and ((info.min is not None and parsed < info.min)
                                     or (info.max is not None and parsed > info.max)):
            return None
        values[name] = parsed
    return values


def main() -> None:
    args = sys.argv[1:]
    if not opens_dashboard(args):
        from dswb.cli.app import main as cli_main

        cli_main()
        return
    from dswb.cli import tui_cmd
    from dswb.errors import EXIT_USER_ERROR, UserError

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        options = quick_options(tui_cmd.tui, args[1:])
        if options is not None:
            tui_cmd.tui(**options)
            return
        import typer

        dashboard = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        dashboard.command()(tui_cmd.tui)   # the only command: Typer runs it without a name
        dashboard(args=args[1:], prog_name="dswb tui")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
