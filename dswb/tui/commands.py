"""Command palette entries that depend on the runs: "Open run …" and "Compare with …"."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider


class RunCommands(Provider):
    """One "Open run <id>" command per run under the runs root."""

    def _commands(self) -> list[tuple[str, str, object]]:
        app = self.app
        commands = []
        for row in getattr(app, "runs", []):
            commands.append((f"Open run {row.run_id}", f"{row.state}, stage {row.stage}, step {row.step:,}",
                             partial(app.open_run, row.paths)))
        return commands

    async def discover(self) -> Hits:
        for title, help_text, callback in self._commands()[:10]:
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
