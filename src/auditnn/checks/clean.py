"""Clean accuracy: the share of test images the model classifies correctly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..data.stream import PixelStore, as_store, my_batches_of
from ..inference import check_logits, eval_mode, model_device
from ..report.schema import BATCH, DATA, INT, NUM_OR_NULL, STR, metric_row
from ..report.tables import Table
from ..runtime import gather_parts, split_on_oom
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
    """Share of the images the model classifies as labelled, read batch_size at a time (a store decodes files in
    `workers` processes) on the model's device. Under torchrun each process scores its batches and only the counts
    travel. float32 division, as every share auditnn reports (a mean of float32 0/1 values)."""
    store, device = as_store(images), model_device(model)
    correct = 0
    with torch.no_grad(), eval_mode(model):
        for _, begin, end, x in my_batches_of(store, batch_size, workers=workers):
            logits = split_on_oom(lambda xs: [model(xs.to(device, non_blocking=True)).float().cpu()], x)
            predicted = torch.cat(logits)
            check_logits(predicted, len(x))
            correct += int((predicted.argmax(1) == labels[begin:end]).sum())
    total = sum(gather_parts([correct]))
    return float(torch.tensor(float(total)) / len(labels)) if len(labels) else 0.0


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
