"""The `dswb` command line (Typer). One module per subcommand; heavy imports happen inside commands."""
