"""User-facing errors: one clear line naming the place, exit code 2, no traceback.

Anything a user can cause (bad TOML, unknown key, wrong type, missing file, malformed data
line, empty dataset) raises `UserError`; the CLI prints `error: <message>` and exits 2.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error caused by the user's input, reported as a single line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # keep it one line whatever the caller passed
        return " ".join(self.message.split())


class TrainingFailed(Exception):
    """The run stopped itself as `failed` (e.g. too many non-finite losses in a row)."""
