"""auditnn: audit PyTorch image classifiers for shortcut learning and adversarial fragility.

The library's entry points (the CLI calls the same functions):

    from auditnn import PGD, evaluate_attack, AttackSpec       # robust accuracy in pixel space [0, 1]
    from auditnn import run_shortcut_audit, ShortcutAuditConfig  # planted-shortcut reliance
    from auditnn import load_policy, run_audit, judge            # audit files and the gate
"""

__version__ = "0.1.0"

from .attacks import FGSM, PGD  # noqa: E402
from .attacks.evaluate import AttackSpec, evaluate_attack  # noqa: E402
from .audit import run_audit  # noqa: E402
from .errors import AuditError  # noqa: E402
from .gate import judge, load_policy  # noqa: E402
from .report import load_report  # noqa: E402
from .shortcut.audit import ShortcutAuditConfig, run_shortcut_audit  # noqa: E402

__all__ = [
    "FGSM", "PGD", "AttackSpec", "AuditError", "ShortcutAuditConfig", "__version__", "evaluate_attack", "judge",
    "load_policy", "load_report", "run_audit", "run_shortcut_audit",
]
