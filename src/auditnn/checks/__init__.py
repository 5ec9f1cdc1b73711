"""Checks: one module per kind of measurement, each registered by name in KINDS (see base.py for the contract).
Importing this package registers every kind."""

from . import clean, attack, shortcut, patch, sensitivity, groups  # noqa: I001 - registration order is the order shown
from . import corruption, discover, scan  # noqa: I001
from .base import KINDS, CheckKind, CheckResult, Context

__all__ = [
    "KINDS",
    "CheckKind",
    "CheckResult",
    "Context",
    "attack",
    "clean",
    "corruption",
    "discover",
    "groups",
    "patch",
    "scan",
    "sensitivity",
    "shortcut",
]
