"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps, Linf."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import AuditError
from .base import Attack, finite_, input_gradient, register_attack, unusable_gradient


@register_attack
@dataclass
class FGSM(Attack):
    name: ClassVar[str] = "fgsm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm != "linf":
            raise AuditError(f"method fgsm takes norm linf only, got '{self.norm}'; use pgd for l2")

    def _perturb(self, model, x, y, targets, generator):  # noqa: ANN001, ANN202
        _, _, grad = input_gradient(model, x, y, targets)
        zero = unusable_gradient(grad)
        adv = (x + self.eps * finite_(grad).sign()).clamp_(0.0, 1.0)
        return adv, torch.zeros(len(x), dtype=torch.bool, device=x.device), zero, len(x)
