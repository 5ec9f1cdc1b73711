"""Shortcut reliance: how much a model's answers follow a planted shortcut instead of the object."""

from .metrics import ShortcutMetrics, attribution_mass, measure_reliance, reliance_from_predictions

__all__ = ["ShortcutMetrics", "attribution_mass", "measure_reliance", "reliance_from_predictions"]
