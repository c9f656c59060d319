"""The one exception type the CLI turns into a readable panel and a non-zero exit."""

from __future__ import annotations


class QloraError(Exception):
    """A problem the user can fix: says what is wrong, where, and what to do.

    `where` names the file (and line) or the setting at fault; `hint` is the
    next action. The CLI prints them in a panel and exits with `exit_code`.
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        parts = [f"{self.where}: {self.message}" if self.where else self.message]
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)
