"""Errors a user can cause: caught at the boundary and shown in plain words with the fix."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or machine, not a bug. ``str()`` is the whole message:
    what is wrong (naming the file or value) and what to do about it."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail  # technical detail for the log, never shown alone
