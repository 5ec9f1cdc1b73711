"""Adversarial attacks in pixel space [0, 1]: FGSM, PGD (Linf, L2) and a universal patch."""

from .base import ATTACKS, Attack, AttackResult, Perturbed, make_attack
from .fab import FAB
from .fgsm import FGSM
from .norms import NORMS, Norm
from .pgd import PGD

__all__ = ["ATTACKS", "Attack", "AttackResult", "FAB", "FGSM", "NORMS", "Norm", "PGD", "Perturbed", "make_attack"]
