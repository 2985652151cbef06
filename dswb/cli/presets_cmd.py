"""`dswb presets list | show NAME | validate FILE...`: find, read and check run presets."""

from __future__ import annotations

from typing import Annotated

import typer

from dswb.cli.common import print_table, user_errors
from dswb.config import config_to_toml, load_config
from dswb.errors import EXIT_USER_ERROR, UserError
from dswb.presets import find_preset, list_presets, preset_dirs

app = typer.Typer(help="List, show and validate presets (TOML run configs).", no_args_is_help=True)

SetOption = Annotated[list[str], typer.Option("--set", metavar="KEY=VALUE",
                                              help="Override a field by dotted path, e.g. train.lr=3e-4.")]


@app.command("list")
@user_errors
def list_cmd() -> None:
    """List presets in ./presets and in the repo's presets/ with what each is for.

    Example: `dswb presets list`
    """
    presets = list_presets()
    if not presets:
        searched = ", ".join(str(d) for d in preset_dirs()) or "./presets"
        typer.echo(f"no presets found (searched {searched})")
        return
    rows = [[p.name, p.summary or "-", p.command or f"dswb run {p.path}"] for p in presets]
    print_table(["name", "summary", "command"], rows, wrap=True)


@app.command("show")
@user_errors
def show(name: Annotated[str, typer.Argument(help="Preset name (e.g. smoke) or path to a TOML file.")],
         resolved: Annotated[bool, typer.Option("--resolved", "-r",
                                                help="Print the fully resolved config (every field) instead of the file.")] = False,
         overrides: SetOption = []) -> None:  # noqa: B006 (Typer reads the default)
    """Print a preset file, or with --resolved the full config it resolves to.

    Example: `dswb presets show smoke --resolved --set train.steps=50`
    """
    path = find_preset(name)
    if not resolved and not overrides:
        typer.echo(path.read_text(encoding="utf-8", errors="replace"), nl=False)
        return
    config = load_config(path, overrides)
    header = f"# resolved from {path}" + "".join(f" --set {o}" for o in overrides)
    typer.echo(header + "\n" + config_to_toml(config), nl=False)


@app.command("validate")
def validate(files: Annotated[list[str], typer.Argument(help="Preset files or names.", show_default=False)],
             overrides: SetOption = []) -> None:  # noqa: B006
    """Load each preset with its overrides and report `ok: FILE` or the error (exit 2 if any fail).

    Example: `dswb presets validate presets/*.toml --set train.steps=10`
    """
    failed = 0
    for item in files:
        try:
            path = find_preset(item)
            load_config(path, overrides)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            failed += 1
            continue
        typer.echo(f"ok: {path}")
    if failed:
        raise typer.Exit(EXIT_USER_ERROR)
