"""The one error family: every message restates the bad input and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable


class AuditError(Exception):
    """Bad input, configuration or environment. The CLI prints the message on one line and exits 2."""


class InvariantError(RuntimeError):
    """An internal guarantee broke (an attack left its eps-ball, NaN appeared). The CLI exits 3."""


def allowed(values: Iterable[object]) -> str:
    """Render a collection of allowed values for an error message: 'a, b or c'."""
    items = [str(v) for v in values]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def option(flag: str, key: str) -> str:
    """A setting named as both its users write it: the command's flag and the audit file's key."""
    return f"{flag} (audit file: {key})"


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the CLI ran. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` (ours or a user's) swallows it. `left` says, truthfully, what the run left on disk; the code
    that knows (the output folder being written) fills it in on the way out."""

    def __init__(self, signum: int, left: str = "no report was written") -> None:
        super().__init__(signum)
        self.signum = signum
        self.left = left
