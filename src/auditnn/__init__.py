"""auditnn: audit PyTorch image classifiers for shortcut learning and adversarial fragility.

The library's entry points (the CLI calls the same functions):

    from auditnn import PGD, evaluate_attack, AttackSpec       # robust accuracy in pixel space [0, 1]
    from auditnn import run_shortcut_audit, ShortcutAuditConfig  # planted-shortcut reliance
    from auditnn import load_policy, run_audit, judge            # audit files and the gate

They are imported on first use (PEP 562), so that `python -m auditnn` installs its signal handlers before torch
loads: a Ctrl-C in the first seconds is then an interrupt, not a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "FGSM": ".attacks", "PGD": ".attacks", "AttackSpec": ".attacks.evaluate", "evaluate_attack": ".attacks.evaluate",
    "run_audit": ".audit", "AuditError": ".errors", "judge": ".gate", "load_policy": ".gate",
    "load_report": ".report", "ShortcutAuditConfig": ".shortcut.audit", "run_shortcut_audit": ".shortcut.audit",
}

if TYPE_CHECKING:
    from .attacks import FGSM, PGD
    from .attacks.evaluate import AttackSpec, evaluate_attack
    from .audit import run_audit
    from .errors import AuditError
    from .gate import judge, load_policy
    from .report import load_report
    from .shortcut.audit import ShortcutAuditConfig, run_shortcut_audit

__all__ = [
    "FGSM", "PGD", "AttackSpec", "AuditError", "ShortcutAuditConfig", "__version__", "evaluate_attack", "judge",
    "load_policy", "load_report", "run_audit", "run_shortcut_audit",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'auditnn' has no attribute '{name}'")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
