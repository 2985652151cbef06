"""The keys: every screen's bindings with a sentence each, generated from the screens."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

GLOBAL_HELP = {
    "?": "this help",
    "n": "launch a new run (preset, stages, overrides)",
    "ctrl+p": "command palette: open a run, launch, compare, control",
    "q": "quit the dashboard; runs keep training (reattach: dswb tui --attach RUN)",
}


def help_table(sections: list[tuple[str, dict[str, str]]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for title, keys in sections:
        table.add_row(Text(title, style="bold underline"), "")
        for key, text in keys.items():
            table.add_row(key, text)
        table.add_row("", "")
    return table


class HelpScreen(ModalScreen[None]):
    """Lists the keys of the app and of the screen it was opened from."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss_help", "Close")]

    def __init__(self, sections: list[tuple[str, dict[str, str]]]) -> None:
        super().__init__()
        self.sections = [("Everywhere", GLOBAL_HELP)] + sections

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog", classes="dialog"):
            yield Static(Text("dswb keys  (escape closes)", style="bold"), id="help-title")
            yield Static(help_table(self.sections), id="help-body")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
