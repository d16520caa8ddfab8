"""Errors a user can cause: each carries one line of text and an exit status."""

from __future__ import annotations

EX_NOINPUT = 66  # check-config: the configuration file does not exist
EX_UNAVAILABLE = 69
EX_CONFIG = 78


class UserError(Exception):
    """A problem reported to the user as one line, never as a traceback."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
