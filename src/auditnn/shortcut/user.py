"""Shortcut audits of the user's trained model on the user's images: planted-tag sensitivity (no retraining) and
per-group accuracy for an annotated attribute."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.controlled import ShortcutConfig
from ..data.sources import ImageSet
from ..errors import AuditError
from ..inference import predict
from ..models.user import UserModelSpec, split_model_spec
from ..report.schema import Report, metric_row
from ..runtime import resolve_device
from ..subject import load_eval_data, resolve_model
from ..train import TrainConfig
from .annotated import AnnotatedMetrics, TagSensitivity, annotated_metrics, load_association, read_groups, tag_sensitivity


@dataclass
class UserShortcutConfig:
    model: UserModelSpec
    data: str  # a source spec: imagefolder:DIR, tensors:FILE, torchvision:NAME
    shortcut: ShortcutConfig | None = None  # plant this tag and count changed answers
    groups: str | None = None  # metadata CSV: file (or index), label, attribute columns
    attribute: str | None = None
    associate: str | None = None  # VALUE:CLASS,... : the class each attribute value stands for
    associate_from: str | None = None  # a training split's metadata CSV: each value's majority class there
    data_root: str | None = None
    download: bool = False
    strict: bool = False
    device: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        if split_model_spec(self.model.spec)[0] == "arch":
            raise AuditError(f"model '{self.model.spec}' is an architecture; auditing your images needs a trained model "
                             "(factory:, torchvision:, export:, torchscript: or auditnn:)")
        if (self.groups is None) != (self.attribute is None):
            raise AuditError("--groups and --attribute go together: the CSV and the column to group by")
        if (self.associate is not None or self.associate_from is not None) and self.groups is None:
            raise AuditError("--associate and --associate-from say which class each attribute value stands for; "
                             "they need --groups and --attribute")
        if self.shortcut is None and self.groups is None:
            raise AuditError("nothing to measure: give --tag (planted-tag sensitivity) and/or --groups with --attribute")
        if self.shortcut is not None:
            self.shortcut.validate()


@dataclass
class UserShortcutResult:
    sensitivity: TagSensitivity | None
    annotated: AnnotatedMetrics | None
    model: str
    data: dict[str, Any]
    seconds: float
    pictures: dict[str, Any] = field(default_factory=dict)


def run_user_shortcut_audit(config: UserShortcutConfig) -> UserShortcutResult:
    config.validate()
    start = time.perf_counter()
    device = resolve_device(config.device)
    data = load_eval_data(data=config.data, data_root=config.data_root, download=config.download, seed=config.seed,
                          strict=config.strict)
    model, _, source, data = resolve_model(config.model, data, TrainConfig(), device)
    sensitivity = annotated = None
    if config.shortcut is not None:
        target = config.shortcut.target_class
        shortcut = config.shortcut.build(data.num_classes)
        sensitivity = tag_sensitivity(model, data.test_images, data.test_labels, shortcut, data.classes,
                                      target_class=target, seed=config.seed)
    if config.groups is not None:
        images = ImageSet(data.test_images, data.test_labels, data.classes, names=data.test_names)
        notes = read_groups(config.groups, config.attribute, images)
        association = load_association(notes, data.classes, config.associate, config.associate_from)
        annotated = annotated_metrics(predict(model, data.test_images), data.test_labels, notes, data.classes,
                                      association=association)
    described = {**data.description, "classes": data.classes, "n_test": len(data.test_labels)}
    return UserShortcutResult(sensitivity, annotated, source, described, time.perf_counter() - start)


def sensitivity_rows(s: TagSensitivity) -> list[dict[str, Any]]:
    rows = [metric_row("sensitivity", name, getattr(s, name), tag=s.tag)
            for name in ("accuracy_without_tag", "flip_rate", "toward_rate")]
    rows += [metric_row("sensitivity", "flip_rate", v["flip_rate"], group=f"tag of {v['tag_class']}", tag=s.tag)
             for v in s.variants]
    return rows


def groups_rows(a: AnnotatedMetrics) -> list[dict[str, Any]]:
    rows = [metric_row("groups", name, getattr(a, name), attribute=a.attribute)
            for name in ("accuracy", "worst_group_accuracy", "aligned_accuracy", "conflicting_accuracy", "gap", "agreement_rate")]
    rows += [metric_row("groups", "group_accuracy", g["accuracy"], group=g["group"], attribute=a.attribute) for g in a.groups]
    return rows


def user_shortcut_report(result: UserShortcutResult, config: UserShortcutConfig, *, run_id: str,
                         environment: dict[str, Any]) -> Report:
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    warnings: list[dict[str, str]] = []
    if result.sensitivity is not None:
        rows += sensitivity_rows(result.sensitivity)
        results["sensitivity"] = {**result.sensitivity.to_dict(), "model": result.model, "data": result.data}
    if result.annotated is not None:
        rows += groups_rows(result.annotated)
        results["groups"] = {**result.annotated.to_dict(), "model": result.model, "data": result.data}
        warnings += result.annotated.warnings
    return Report(command="shortcut", run_id=run_id, config=asdict(config), environment=environment, seed=config.seed,
                  results=results, metrics=rows, timings={"total": result.seconds}, warnings=warnings)
