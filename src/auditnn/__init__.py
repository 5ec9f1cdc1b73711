"""auditnn: audit PyTorch image classifiers for shortcut learning and adversarial fragility."""

__version__ = "0.1.0"

from .errors import AuditError  # noqa: E402

__all__ = ["AuditError", "__version__"]
