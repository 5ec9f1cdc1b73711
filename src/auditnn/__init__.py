"""auditnn: audit PyTorch image classifiers for shortcut learning and adversarial fragility.

The library's entry points (the CLI calls the same functions):

    from auditnn import PGD, evaluate_attack, AttackSpec    # robust accuracy in pixel space [0, 1]
    from auditnn import Plan, Check, SubjectSpec, run_plan  # any check (auditnn.checks.KINDS), as the CLI runs it
    from auditnn import load_plan, judge                    # audit files and the gate

They are imported on first use (PEP 562), so that `python -m auditnn` installs its signal handlers before torch
loads: a Ctrl-C in the first seconds is then an interrupt, not a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "FGSM": ".attacks",
    "PGD": ".attacks",
    "AttackSpec": ".attacks.evaluate",
    "evaluate_attack": ".attacks.evaluate",
    "AuditError": ".errors",
    "judge": ".gate",
    "Check": ".plan",
    "Plan": ".plan",
    "load_plan": ".plan",
    "load_report": ".report",
    "run_plan": ".runner",
    "SubjectSpec": ".subject",
}

if TYPE_CHECKING:
    from .attacks import FGSM, PGD
    from .attacks.evaluate import AttackSpec, evaluate_attack
    from .errors import AuditError
    from .gate import judge
    from .plan import Check, Plan, load_plan
    from .report import load_report
    from .runner import run_plan
    from .subject import SubjectSpec

__all__ = [
    "FGSM",
    "PGD",
    "AttackSpec",
    "AuditError",
    "Check",
    "Plan",
    "SubjectSpec",
    "__version__",
    "evaluate_attack",
    "judge",
    "load_plan",
    "load_report",
    "run_plan",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'auditnn' has no attribute '{name}'")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
