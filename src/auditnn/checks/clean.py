"""Clean accuracy: the share of test images the model classifies correctly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..data.stream import PixelStore
from ..inference import predictions
from ..report.schema import BATCH, DATA, INT, NUM_OR_NULL, STR, metric_row
from ..report.tables import Table
from .base import CheckKind, CheckResult, Context, batch_size_for, cli_only, register


@dataclass
class CleanSettings:
    batch_size: int | None = field(default=None, metadata=cli_only())  # None: chosen from memory (batch_size_for)


def clean_accuracy(
    model: nn.Module,
    images: torch.Tensor | PixelStore,
    labels: torch.Tensor,
    *,
    batch_size: int,
    workers: int | None = None,
) -> float:
    """Share of the images the model classifies as labelled, read batch_size at a time (inference.predictions: a
    store decodes files in `workers` processes; under torchrun each process predicts its own batches). float32
    division, as every share auditnn reports (a mean of float32 0/1 values)."""
    correct = int((predictions(model, images, batch_size=batch_size, workers=workers) == labels).sum())
    return float(torch.tensor(float(correct)) / len(labels)) if len(labels) else 0.0


@register
class Clean(CheckKind[CleanSettings]):
    name = "clean"
    settings = CleanSettings
    thresholds = {"min_accuracy": ("accuracy", "min")}
    section_schema = {"accuracy": NUM_OR_NULL, "n": INT, "model": STR, "data?": DATA, "check?": STR, "batch?": BATCH}

    def section_key(self, name: str) -> str:
        return "clean"  # one model has one clean accuracy, whatever the check is called

    def title(self, settings: CleanSettings) -> tuple[str, tuple[str, ...]]:
        return "clean accuracy", ()

    def measure(self, settings: CleanSettings, ctx: Context) -> CheckResult:
        subject = ctx.subject
        assert subject is not None  # needs_subject: the runner resolved it
        batch = batch_size_for(ctx, settings.batch_size)
        data = subject.data
        accuracy = clean_accuracy(subject.model, data.test, data.test_labels, batch_size=batch["size"])
        n = len(data.test_labels)
        section = {"accuracy": accuracy, "n": n, "model": subject.source, "data": subject.described, "batch": batch}
        return CheckResult([metric_row("clean", "accuracy", accuracy)], section)

    def tables(self, section: dict[str, Any]) -> list[Table]:
        return []
