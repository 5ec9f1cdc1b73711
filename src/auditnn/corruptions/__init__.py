"""Natural corruptions (ImageNet-C): batched torch functions registered by name (see base.py for the contract)."""

from .base import BENCHMARK, CORRUPTIONS, HELD_OUT, SEVERITIES, Corruption, corrupt, corruption, parse_corruptions

__all__ = [
    "BENCHMARK",
    "CORRUPTIONS",
    "HELD_OUT",
    "SEVERITIES",
    "Corruption",
    "corrupt",
    "corruption",
    "parse_corruptions",
]
