"""Per-group accuracy for an annotated attribute of the user's images (label x attribute value)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..inference import predictions
from ..report.schema import BATCH, DATA, INT, NUM_OR_NULL, STR, metric_row
from ..report.tables import Table, fmt
from ..shortcut.annotated import AnnotatedMetrics, annotated_metrics, load_association, read_groups
from .base import CheckKind, CheckResult, Context, batch_size_for, of_check, path_setting, register


@dataclass
class GroupsSettings:
    """groups: a metadata CSV (file or index, label, attribute columns); attribute: the column to group by;
    associate: VALUE:CLASS,... the class each value stands for; associate_from: a training split's metadata CSV
    whose majority class per value is used (neither: the majority among the evaluated images, with a warning);
    mitigation: None, or "dfr" to retrain the model's last layer on a group-balanced part of the annotated images
    (Deep Feature Reweighting) and report before/after on the rest, the thresholds judging the retrained rows;
    holdout: the share of each group's images set aside for that retraining (never scored)."""

    groups: str = field(metadata=path_setting())
    attribute: str
    associate: str | None = None
    associate_from: str | None = field(default=None, metadata=path_setting())
    mitigation: str | None = None
    holdout: float = 0.5


MITIGATIONS = ("dfr",)


SCALARS = ("accuracy", "worst_group_accuracy", "aligned_accuracy", "conflicting_accuracy", "gap", "agreement_rate")


def groups_rows(a: AnnotatedMetrics) -> list[dict[str, Any]]:
    rows = [metric_row("groups", name, getattr(a, name), attribute=a.attribute) for name in SCALARS]
    rows += [
        metric_row("groups", "group_accuracy", g["accuracy"], group=g["group"], attribute=a.attribute) for g in a.groups
    ]
    return rows


@register
class Groups(CheckKind[GroupsSettings]):
    name = "groups"
    settings = GroupsSettings
    thresholds = {
        "min_worst_group_accuracy": ("worst_group_accuracy", "min"),
        "max_gap": ("gap", "max"),
        "max_agreement_rate": ("agreement_rate", "max"),
    }
    section_schema = {
        "attribute": STR,
        "n": INT,
        "model": STR,
        "data?": DATA,
        "check?": STR,
        "batch?": BATCH,
        "worst_group": STR,
        "associated_class": {"*": STR},
        "association_source?": STR,
        "groups": [{"group": STR, "n": INT, "accuracy": NUM_OR_NULL}],
        **{k: NUM_OR_NULL for k in SCALARS},
    }

    def title(self, settings: GroupsSettings) -> tuple[str, tuple[str, ...]]:
        return f"groups by {settings.attribute}", ("attribute", "groups")

    def labels(self, settings: GroupsSettings) -> dict[str, Any]:
        return {"attribute": settings.attribute}

    def measure(self, settings: GroupsSettings, ctx: Context) -> CheckResult:
        subject = ctx.subject
        assert subject is not None  # needs_subject: the runner resolved it
        data = subject.data
        notes = read_groups(settings.groups, settings.attribute, data.test_labels, data.classes, data.test_names)
        association = load_association(notes, data.classes, settings.associate, settings.associate_from)
        batch = batch_size_for(ctx, None)
        predicted = predictions(subject.model, data.test, batch_size=batch["size"])
        measured = annotated_metrics(predicted, data.test_labels, notes, data.classes, association=association)
        section = {**measured.to_dict(), "model": subject.source, "data": subject.described, "batch": batch}
        return CheckResult(groups_rows(measured), section, warnings=list(measured.warnings))

    def tables(self, section: dict[str, Any]) -> list[Table]:
        summary = [
            ["accuracy", fmt(section["accuracy"])],
            ["worst-group accuracy", f"{fmt(section['worst_group_accuracy'])} ({section['worst_group']})"],
            ["accuracy, label = attribute's class", fmt(section["aligned_accuracy"])],
            ["accuracy, label != attribute's class", fmt(section["conflicting_accuracy"])],
            ["gap", fmt(section["gap"])],
            ["answers agreeing with the attribute's class", fmt(section["agreement_rate"])],
            ["attribute's class", ", ".join(f"{k}: {v}" for k, v in section["associated_class"].items())],
        ]
        groups = [
            [g["group"], str(g["n"]), fmt(g["accuracy"])]
            for g in sorted(section["groups"], key=lambda g: g["accuracy"])
        ]
        title = (
            f"Groups by '{section['attribute']}' ({section['n']} annotated images, model {section['model']})"
            f"{of_check(section)}"
        )
        return [
            Table(title, ["metric", "value"], summary),
            Table("Accuracy per group (label x attribute)", ["group", "n", "accuracy"], groups),
        ]
