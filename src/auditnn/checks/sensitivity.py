"""Planted-tag sensitivity: plant a tag on the user's images, without retraining, and count changed answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..report.schema import BATCH, DATA, INT, NUM_OR_NULL, STR, metric_row
from ..report.tables import Table, fmt
from ..shortcut.annotated import TagSensitivity, tag_sensitivity
from ..subject import SubjectSpec
from .base import CheckKind, CheckResult, Context, batch_size_for, of_check, planted, register


@dataclass
class SensitivitySettings:
    """tag: watermark, background or boat; size, opacity, position: the tag's look (None: the tag's default);
    target_class: plant only this class's variant (None: every class's, one at a time)."""

    tag: str = "watermark"
    size: int | None = None
    opacity: float | None = None
    position: str | None = None
    target_class: int | None = None


SCALARS = ("accuracy_without_tag", "flip_rate", "toward_rate")


def sensitivity_rows(s: TagSensitivity) -> list[dict[str, Any]]:
    rows = [
        metric_row("sensitivity", name, getattr(s, name), tag=s.tag)
        for name in ("accuracy_without_tag", "flip_rate", "toward_rate")
    ]
    rows += [
        metric_row("sensitivity", "flip_rate", v["flip_rate"], group=f"tag of {v['tag_class']}", tag=s.tag)
        for v in s.variants
    ]
    return rows


@register
class Sensitivity(CheckKind[SensitivitySettings]):
    name = "sensitivity"
    settings = SensitivitySettings
    thresholds = {"max_flip_rate": ("flip_rate", "max"), "max_toward_rate": ("toward_rate", "max")}
    section_schema = {
        "tag": STR,
        "n": INT,
        "model": STR,
        "data?": DATA,
        "check?": STR,
        "batch?": BATCH,
        **{k: NUM_OR_NULL for k in SCALARS},
        "variants": [
            {
                "tag_class": STR,
                "top_destination": STR,
                "flip_rate": NUM_OR_NULL,
                "toward_rate": NUM_OR_NULL,
                "accuracy_with_tag": NUM_OR_NULL,
            }
        ],
    }

    def validate(self, settings: SensitivitySettings, spec: SubjectSpec) -> None:
        planted(settings).validate()

    def title(self, settings: SensitivitySettings) -> tuple[str, tuple[str, ...]]:
        return f"planted {settings.tag} sensitivity", ("tag",)

    def labels(self, settings: SensitivitySettings) -> dict[str, Any]:
        return {"tag": settings.tag}

    def measure(self, settings: SensitivitySettings, ctx: Context) -> CheckResult:
        subject = ctx.subject
        assert subject is not None  # needs_subject: the runner resolved it
        data = subject.data
        batch = batch_size_for(ctx, None)
        measured = tag_sensitivity(
            subject.model,
            data.test,
            data.test_labels,
            planted(settings).build(data.num_classes),
            data.classes,
            target_class=settings.target_class,
            seed=ctx.seed,
            batch_size=batch["size"],
        )
        section = {**measured.to_dict(), "model": subject.source, "data": subject.described, "batch": batch}
        return CheckResult(sensitivity_rows(measured), section)

    def tables(self, section: dict[str, Any]) -> list[Table]:
        rows = [
            [
                v["tag_class"],
                fmt(v["flip_rate"]),
                fmt(v["toward_rate"]),
                fmt(v["accuracy_with_tag"]),
                v["top_destination"],
            ]
            for v in section["variants"]
        ]
        rows.append(["mean", fmt(section["flip_rate"]), fmt(section["toward_rate"]), "-", "-"])
        title = (
            f"Planted-tag sensitivity: {section['tag']} on {section['n']} images, model {section['model']} "
            f"(accuracy without the tag {fmt(section['accuracy_without_tag'])}){of_check(section)}"
        )
        return [
            Table(
                title,
                ["tag of class", "answers changed", "moved to the tag's class", "accuracy with tag", "most changed to"],
                rows,
            )
        ]
