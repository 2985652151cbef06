"""The launch form: preset, stages, overrides (validated as you type), then a detached run.

Nothing starts until the config validates; `launch_detached` then starts `python -m dswb run`
in its own session, so the run outlives the dashboard. Dismisses with the new run's paths.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from dswb.errors import UserError
from dswb.rundir import RunPaths
from dswb.tui import launching
from dswb.tui.launching import ALL_STAGES, PresetChoice


class LaunchScreen(ModalScreen[RunPaths | None]):
    """Pick a preset and stages, type overrides, launch with ctrl+l (escape cancels)."""

    BINDINGS = [
        Binding("ctrl+l", "launch", "Launch", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]
    HELP = {
        "tab / shift+tab": "move between fields",
        "ctrl+l": "launch (only when the form is valid)",
        "escape": "cancel",
        "stages": "all of the preset's stages, one alone, or a pipeline from one stage onward",
        "overrides": "one SECTION.KEY=VALUE per line, e.g. train.lr=3e-4 (validated as you type)",
    }

    def __init__(self, runs_root: Path, presets: list[PresetChoice] | None = None) -> None:
        super().__init__()
        self.runs_root = runs_root
        self.presets = presets if presets is not None else launching.available_presets()
        self.valid = False
        self.message = ""
        self.launching = False
        self.stages: list[str] = []  # the chosen preset's own stages

    def compose(self) -> ComposeResult:
        default = launching.default_preset(self.presets)
        options = [(p.name, p.name) for p in self.presets]
        with VerticalScroll(id="launch-dialog", classes="dialog"):
            yield Static(Text("Launch a run", style="bold"), id="launch-title")
            with Horizontal(classes="form-row"):
                yield Label("Preset")
                yield Select(options, value=default.name if default else Select.BLANK, allow_blank=default is None,
                             id="preset", prompt="no presets found", compact=True)
            yield Static("", id="preset-info")
            with Horizontal(classes="form-row"):
                yield Label("Stages")
                yield Select([("all stages", ALL_STAGES)], value=ALL_STAGES, allow_blank=False, id="stage",
                             compact=True)
            with Horizontal(classes="form-row"):
                yield Label("Run name")
                yield Input(placeholder="(from the preset)", id="run-name", compact=True)
            yield Label("Overrides, one SECTION.KEY=VALUE per line (e.g. train.lr=3e-4):", id="overrides-label")
            yield TextArea("", id="overrides", soft_wrap=True, show_line_numbers=False, compact=True)
            yield Static("", id="validation")
            with Horizontal(classes="buttons"):
                yield Button("Launch ^l", variant="primary", id="launch", compact=True)
                yield Button("Cancel esc", id="cancel", compact=True)

    def on_mount(self) -> None:
        self._preset_changed()
        self.query_one("#preset", Select).focus()

    # -- form state -------------------------------------------------------------------------
    def preset(self) -> PresetChoice | None:
        value = self.query_one("#preset", Select).value
        return next((p for p in self.presets if p.name == value), None)

    def overrides(self) -> list[str]:
        return launching.build_overrides(self.query_one("#overrides", TextArea).text,
                                         str(self.query_one("#stage", Select).value),
                                         self.query_one("#run-name", Input).value, self.stages)

    def _preset_changed(self) -> None:
        preset = self.preset()
        info = self.query_one("#preset-info", Static)
        stage_select = self.query_one("#stage", Select)
        if preset is None:
            info.update("no preset: put TOML presets in ./presets")
            self.validate_form()
            return
        info.update(Text(preset.summary or str(preset.path), style="dim"))
        stages: list[str] = []
        try:
            stages = list(launching.validate(preset.path, []).run.stages)
        except UserError:
            pass
        self.stages = stages
        stage_select.set_options(launching.stage_choices(stages))
        stage_select.value = ALL_STAGES
        self.validate_form()

    def validate_form(self) -> bool:
        preset = self.preset()
        if preset is None:
            self.valid, self.message = False, "choose a preset"
        else:
            self.valid, self.message = launching.check(preset.path, self.overrides())
        status = self.query_one("#validation", Static)
        status.update(Text(("✔ " if self.valid else "✘ ") + self.message,
                           style="green" if self.valid else "bold red"))
        status.set_class(not self.valid, "error")
        return self.valid

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset":
            self._preset_changed()
        else:
            self.validate_form()

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self.validate_form()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.validate_form()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "launch":
            self.action_launch()
        else:
            self.action_cancel()

    # -- actions ----------------------------------------------------------------------------
    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_launch(self) -> None:
        if self.launching or not self.validate_form():
            self.app.bell()
            return
        preset = self.preset()
        assert preset is not None
        self.launching = True
        self.query_one("#validation", Static).update(Text("starting…", style="yellow"))
        self._launch(preset.path, self.overrides())

    @work(thread=True, exclusive=True, group="launch", name="launch-run")
    def _launch(self, preset: Path, overrides: list[str]) -> None:
        try:
            paths, _pid = self.app.launcher(str(preset), self.runs_root, overrides)
        except (UserError, OSError) as exc:
            self.app.call_from_thread(self._launch_failed, str(exc))
            return
        self.app.call_from_thread(self.dismiss, paths)

    def _launch_failed(self, message: str) -> None:
        self.launching = False
        self.valid = False
        status = self.query_one("#validation", Static)
        status.update(Text(f"✘ {message}", style="bold red"))
        status.add_class("error")
