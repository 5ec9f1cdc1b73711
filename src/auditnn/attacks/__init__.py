"""Adversarial attacks in pixel space [0, 1]: FGSM, PGD, APGD, APGD-T, FAB-T, Square (Linf, L2), the AutoAttack
ensemble of the last four, and a universal patch."""

from .apgd import APGD, APGDT
from .autoattack import AutoAttack
from .base import ATTACKS, Attack, AttackResult, Perturbed, make_attack
from .fab import FAB
from .fgsm import FGSM
from .norms import NORMS, Norm
from .pgd import PGD
from .square import Square

__all__ = [
    "APGD",
    "APGDT",
    "AutoAttack",
    "ATTACKS",
    "FAB",
    "Attack",
    "AttackResult",
    "FGSM",
    "NORMS",
    "Norm",
    "PGD",
    "Perturbed",
    "Square",
    "make_attack",
]
