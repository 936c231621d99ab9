"""One error type for bad input, so every front end can show it the same way."""

from __future__ import annotations

from pathlib import Path


class FamousError(Exception):
    """Bad input or a failed step, described for the user.

    Parameters
    ----------
    what : str
        What is wrong.
    path : str or Path, optional
        The file or folder concerned; named first in the message.
    fix : str, optional
        How the user can fix it.
    """

    def __init__(self, what: str, path: str | Path | None = None, fix: str | None = None):
        self.what = what
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.path}: {self.what}" if self.path else self.what
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


class Cancelled(Exception):
    """Raised inside a long step when the user asked to stop."""
