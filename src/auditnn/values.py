"""Parsing of user-supplied values shared by the CLI and the audit file: number lists with fractions."""

from __future__ import annotations

import math
from fractions import Fraction

from .errors import AuditError

# Seeds are 0 .. 2**32 - 1: numpy's range, and small enough that the per-batch seeds derived from them
# (seed x 1_000_003 + batch, runtime.batch_generator) stay inside torch's 64 bits.
MAX_SEED = 2**32 - 1


def parse_number(text: str, name: str) -> float:
    """'0.5', '8/255' or '1e-3' -> float; anything else, 'inf', 'nan' and '1e999' (which overflows to inf) included,
    names the option and the bad value. No option takes a non-finite value: an infinite radius, step, mean or std
    only ever ends in NaN pixels or logits."""
    text = text.strip()
    try:
        value = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise AuditError(
            f"{name} value '{text}' is not a number; allowed: decimals or fractions such as 8/255"
        ) from None
    return require_finite(value, name, text)


def require_finite(value: float, name: str, text: str | None = None) -> float:
    """`value` unchanged when finite; else an AuditError naming the option and the value as the user typed it."""
    if not math.isfinite(value):
        raise AuditError(
            f"{name} value '{value if text is None else text}' is not a finite number; "
            "allowed: finite decimals or fractions such as 8/255"
        )
    return value


def parse_number_list(text: str, name: str, *, unique: bool = True) -> list[float]:
    """'0.5,0.9,0.99' -> [0.5, 0.9, 0.99], order kept. unique: drop repeats (a sweep: eps or rho lists); a
    per-channel list (mean, std) keeps every value."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise AuditError(f"{name} '{text}' is empty; allowed: one or more comma-separated numbers")
    values = [parse_number(p, name) for p in parts]
    return list(dict.fromkeys(values)) if unique else values


def fmt_eps(eps: float) -> str:
    """Radii that are whole multiples of 1/255 read as k/255, as people write them."""
    k = eps * 255
    return f"{round(k)}/255" if 0 < eps < 1 and abs(k - round(k)) < 1e-6 else f"{eps:g}"
