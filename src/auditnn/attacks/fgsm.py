"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps, Linf."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from .base import Attack, Perturbed, finite_, input_gradient, register_attack, unusable_gradient


@register_attack
@dataclass
class FGSM(Attack):
    name: ClassVar[str] = "fgsm"
    description: ClassVar[str] = "takes one step from the clean image"
    norms: ClassVar[tuple[str, ...]] = ("linf",)  # the signed step is the Linf geometry; L2 is PGD's

    def _perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        generator: torch.Generator,
    ) -> Perturbed:
        _, _, grad = input_gradient(model, x, y, targets)
        zero = unusable_gradient(grad)
        adv = (x + self.geometry.direction(finite_(grad), self.eps)).clamp_(0.0, 1.0)
        return Perturbed(adv, torch.zeros(len(x), dtype=torch.bool, device=x.device), zero, len(x))
