"""Audits of a trained model on the user's own images: per-group accuracy for an annotated attribute (a metadata
CSV; group = label x attribute, the Waterbirds/CelebA convention), and planted-tag sensitivity (does a benign
watermark, boat or background change the answer, and toward which class?)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from ..data.shortcuts import Shortcut
from ..data.sources import ImageSet
from ..errors import AuditError
from ..inference import predict


@dataclass
class Annotations:
    attribute: str
    values: list[str]  # attribute values, index = code
    codes: torch.Tensor  # (N,) int64 code per image, -1 where the CSV has no row for the image
    n_rows: int


def read_groups(path: str | Path, attribute: str, data: ImageSet) -> Annotations:
    """Read FILE.csv with a 'file' (or 'index') column, a 'label' column and attribute columns; check every row
    against the data (the file exists, the label agrees)."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"groups file '{path}' does not exist; give a CSV with file (or index), label and attribute columns")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise AuditError(f"groups file '{path}' is not a readable CSV ({exc})") from None
    key = "file" if "file" in table.columns else "index" if "index" in table.columns else None
    for needed in (key or "file", "label", attribute):
        if needed not in table.columns:
            raise AuditError(f"groups file '{path}' has no column '{needed}'; it has: {', '.join(table.columns)}; "
                             "allowed: file (or index), label and attribute columns")
    names = data.names or [str(i) for i in range(len(data))]
    position = {name: i for i, name in enumerate(names)}
    if key == "file":  # a bare file name also matches when it is unique in the folder
        for i, name in enumerate(names):
            position.setdefault(Path(name).name, i)
    values = sorted(set(table[attribute]))
    codes = torch.full((len(data),), -1, dtype=torch.long)
    unknown, mismatched = [], []
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        ref = str(getattr(row, key))
        i = position.get(ref)
        if i is None:
            unknown.append(f"row {row_number} '{ref}'")
            continue
        label = str(row.label)
        if label not in (str(int(data.labels[i])), data.classes[int(data.labels[i])]):
            mismatched.append(f"row {row_number} '{ref}' says {label}, the data says {data.classes[int(data.labels[i])]}")
        codes[i] = values.index(getattr(row, attribute))
    if unknown:
        raise AuditError(f"groups file '{path}' names {len(unknown)} image(s) not in the data, e.g. {unknown[0]}; "
                         f"the '{key}' column must match the data's {'files' if key == 'file' else 'indices'}")
    if mismatched:
        raise AuditError(f"groups file '{path}' disagrees with the data's labels: {mismatched[0]}")
    return Annotations(attribute, values, codes, len(table))


@dataclass
class AnnotatedMetrics:
    attribute: str
    n: int  # annotated images measured
    accuracy: float
    worst_group_accuracy: float
    worst_group: str
    associated_class: dict[str, str]  # attribute value -> the class it co-occurs with most
    aligned_accuracy: float  # images whose label is their attribute's associated class
    conflicting_accuracy: float
    gap: float  # aligned - conflicting
    agreement_rate: float  # conflicting images predicted as their attribute's associated class
    groups: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def annotated_metrics(preds: torch.Tensor, labels: torch.Tensor, notes: Annotations, classes: list[str]) -> AnnotatedMetrics:
    keep = notes.codes >= 0
    if not keep.any():
        raise AuditError(f"no image of the data is annotated with '{notes.attribute}'")
    preds, labels, codes = preds[keep], labels[keep], notes.codes[keep]
    correct = preds == labels
    k = len(classes)
    associated = torch.zeros(len(notes.values), dtype=torch.long)
    for v in range(len(notes.values)):
        counts = torch.bincount(labels[codes == v], minlength=k)
        associated[v] = int(counts.argmax())
    aligned = labels == associated[codes]
    groups = []
    for v, value in enumerate(notes.values):
        for c in range(k):
            members = (codes == v) & (labels == c)
            if members.any():
                groups.append({"group": f"{classes[c]} x {value}", "label": c, "attribute": value,
                               "n": int(members.sum()), "accuracy": float(correct[members].float().mean())})
    worst = min(groups, key=lambda g: g["accuracy"])

    def mean(mask: torch.Tensor, values: torch.Tensor) -> float:
        return float(values[mask].float().mean()) if mask.any() else float("nan")

    acc_aligned, acc_conflicting = mean(aligned, correct), mean(~aligned, correct)
    return AnnotatedMetrics(
        attribute=notes.attribute, n=int(keep.sum()), accuracy=float(correct.float().mean()),
        worst_group_accuracy=worst["accuracy"], worst_group=worst["group"],
        associated_class={value: classes[int(associated[v])] for v, value in enumerate(notes.values)},
        aligned_accuracy=acc_aligned, conflicting_accuracy=acc_conflicting, gap=acc_aligned - acc_conflicting,
        agreement_rate=mean(~aligned, preds == associated[codes]), groups=groups,
    )


@dataclass
class TagSensitivity:
    tag: str
    n: int
    accuracy_without_tag: float
    flip_rate: float  # mean over variants: predictions that change when the tag is planted
    toward_rate: float  # mean over variants: images newly predicted as the tag's class
    variants: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tag_sensitivity(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, shortcut: Shortcut, classes: list[str],
    *, target_class: int | None = None, seed: int = 0,
) -> TagSensitivity:
    """Plant each class's variant of the tag (or only target_class's) on every image, without retraining, and
    count how many predictions change and how many move to the tag's class."""
    base_images, _ = shortcut.plant(images, torch.full((len(images),), -1), generator=torch.Generator().manual_seed(seed))
    base = predict(model, base_images)
    variants = []
    for k in ([target_class] if target_class is not None else range(len(classes))):
        planted, _ = shortcut.plant(images, torch.full((len(images),), k), generator=torch.Generator().manual_seed(seed))
        preds = predict(model, planted)
        flipped = preds != base
        destinations = torch.bincount(preds[flipped], minlength=len(classes))
        variants.append({
            "tag_class": classes[k], "flip_rate": float(flipped.float().mean()),
            "toward_rate": float(((preds == k) & (base != k)).float().mean()),
            "accuracy_with_tag": float((preds == labels).float().mean()),
            "top_destination": classes[int(destinations.argmax())] if flipped.any() else "-",
        })
    return TagSensitivity(
        tag=shortcut.name, n=len(labels), accuracy_without_tag=float((base == labels).float().mean()),
        flip_rate=sum(v["flip_rate"] for v in variants) / len(variants),
        toward_rate=sum(v["toward_rate"] for v in variants) / len(variants), variants=variants,
    )
