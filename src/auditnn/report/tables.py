"""Tables derived from a Report: what the terminal and the Markdown summary show. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Report


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


def fmt(value: float | int | None, digits: int = 3) -> str:
    """A measured number for a table: floats to `digits` places, '-' for none. Anything else is a bug upstream
    (load_report checks every field's type), never text to pass through into a page."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"fmt() takes a number or None, not {type(value).__name__}")
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def bound_symbol(bound: str) -> str:
    """How a verdict row's bound reads: '>=' for min, '<=' for max, else as recorded ('max drop')."""
    return {"min": ">=", "max": "<="}.get(bound, bound)


def report_tables(report: Report) -> list[Table]:
    """Each results section drawn by its check kind (an audit keys a check's section '<kind>/<check name>');
    sections no kind draws (the verdict) are left to their own renderers."""
    from ..checks import KINDS  # the kinds import this module for Table and fmt

    tables: list[Table] = []
    for name, section in report.results.items():
        kind = KINDS.get(name.split("/", 1)[0])
        if kind is not None:
            tables.extend(kind.tables(section))
    return tables
