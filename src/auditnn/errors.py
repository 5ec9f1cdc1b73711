"""The one error family: every message restates the bad input and what is allowed."""

from __future__ import annotations


class AuditError(Exception):
    """Bad input, configuration or environment. The CLI prints the message on one line and exits 2."""


class InvariantError(RuntimeError):
    """An internal guarantee broke (an attack left its eps-ball, NaN appeared). The CLI exits 3."""


def allowed(values: object) -> str:
    """Render a collection of allowed values for an error message: 'a, b or c'."""
    items = [str(v) for v in values]  # type: ignore[attr-defined]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]
