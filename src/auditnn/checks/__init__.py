"""Checks: one module per kind of measurement, each registered by name in KINDS (see base.py for the contract).
Importing this package registers every kind."""

from . import clean, attack, shortcut, patch, sensitivity, groups, scan  # noqa: I001 - registration order is the order shown
from .base import KINDS, CheckKind, CheckResult, Context

__all__ = [
    "KINDS",
    "CheckKind",
    "CheckResult",
    "Context",
    "attack",
    "clean",
    "groups",
    "patch",
    "scan",
    "sensitivity",
    "shortcut",
]
