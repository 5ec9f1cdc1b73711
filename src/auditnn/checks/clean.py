"""Clean accuracy: the share of test images the model classifies correctly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..report.schema import DATA, INT, NUM_OR_NULL, STR, metric_row
from ..report.tables import Table
from .base import CheckKind, CheckResult, Context, register

BATCH = 512  # images per forward pass


@dataclass
class CleanSettings:
    pass


@register
class Clean(CheckKind[CleanSettings]):
    name = "clean"
    settings = CleanSettings
    thresholds = {"min_accuracy": ("accuracy", "min")}
    section_schema = {"accuracy": NUM_OR_NULL, "n": INT, "model": STR, "data?": DATA, "check?": STR}

    def section_key(self, name: str) -> str:
        return "clean"  # one model has one clean accuracy, whatever the check is called

    def title(self, settings: CleanSettings) -> tuple[str, tuple[str, ...]]:
        return "clean accuracy", ()

    def measure(self, settings: CleanSettings, ctx: Context) -> CheckResult:
        from ..inference import predict

        subject = ctx.subject
        assert subject is not None  # needs_subject: the runner resolved it
        correct = sum(
            int((predict(subject.model, images) == labels).sum()) for images, labels in subject.data.test_batches(BATCH)
        )
        n = len(subject.data.test_labels)
        # float32 division, as every share auditnn reports (a mean of float32 0/1 values)
        accuracy = float(torch.tensor(float(correct)) / n)
        section = {"accuracy": accuracy, "n": n, "model": subject.source, "data": subject.described}
        return CheckResult([metric_row("clean", "accuracy", accuracy)], section)

    def tables(self, section: dict[str, Any]) -> list[Table]:
        return []
