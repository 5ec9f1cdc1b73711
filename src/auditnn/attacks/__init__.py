"""Adversarial attacks in pixel space [0, 1]: FGSM, PGD (Linf, L2) and a universal patch."""

from .base import ATTACKS, Attack, AttackResult, make_attack
from .fgsm import FGSM
from .pgd import PGD

__all__ = ["ATTACKS", "Attack", "AttackResult", "FGSM", "PGD", "make_attack"]
