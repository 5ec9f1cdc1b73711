"""Audits of a trained model on the user's own images: per-group accuracy for an annotated attribute (a metadata
CSV; group = label x attribute, the Waterbirds/CelebA convention), and planted-tag sensitivity (does a benign
watermark, boat or background change the answer, and toward which class?).

Both read the images batch by batch (a store: in memory, or files decoded per batch) and keep per-sample
predictions only; under torchrun each process reads its own batches and the predictions are gathered."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn

from ..data.shortcuts import Shortcut
from ..data.stream import PixelStore, as_store, my_batches_of
from ..errors import AuditError, allowed, option
from ..inference import eval_mode, model_device, predict, predicted_classes
from ..runtime import gather_parts


@dataclass
class Annotations:
    attribute: str
    values: list[str]  # attribute values, index = code
    codes: torch.Tensor  # (N,) int64 code per image, -1 where the CSV has no row for the image
    n_rows: int


def _read_csv(path: Path, what: str, hint: str) -> pd.DataFrame:
    if not path.is_file():
        raise AuditError(f"{what} '{path}' does not exist; {hint}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise AuditError(f"{what} '{path}' is not a readable CSV ({exc})") from None


def _class_index(text: str, classes: list[str]) -> int | None:
    """A class given by name or by index, as the CSVs and --associate write it; None when it is neither."""
    if text in classes:
        return classes.index(text)
    return int(text) if text.isdigit() and int(text) < len(classes) else None


def _classes_allowed(classes: list[str]) -> str:
    indices = f"0 .. {len(classes) - 1}"
    if classes == [str(k) for k in range(len(classes))]:  # the names are the indices: say them once
        return indices
    return f"{', '.join(classes)} or {indices}"


def read_groups(
    path: str | Path, attribute: str, labels: torch.Tensor, classes: list[str], names: list[str] | None = None
) -> Annotations:
    """Read FILE.csv with a 'file' (or 'index') column, a 'label' column and attribute columns; check every row
    against the data: its labels (N,) int64, classes, and per image its file name (None: its index). The file
    exists, the label agrees, no image is given two different rows. Column names are taken as written: spaces,
    keywords and leading digits (CelebA's '5_o_Clock_Shadow') are fine. No pixel is read."""
    path = Path(path)
    table = _read_csv(path, "groups file", "give a CSV with file (or index), label and attribute columns")
    key = "file" if "file" in table.columns else "index" if "index" in table.columns else None
    for needed in (key or "file", "label", attribute):
        if needed not in table.columns:
            raise AuditError(
                f"groups file '{path}' has no column {needed!r}; it has: {', '.join(table.columns)}; "
                "allowed: file (or index), label and attribute columns"
            )
    names = names or [str(i) for i in range(len(labels))]
    position = {name: i for i, name in enumerate(names)}
    if key == "file":  # a bare file name also matches when it is unique in the folder
        for i, name in enumerate(names):
            position.setdefault(Path(name).name, i)
    values = sorted(set(table[attribute]))
    codes = torch.full((len(labels),), -1, dtype=torch.long)
    unknown: list[str] = []
    mismatched: list[str] = []
    seen: dict[int, tuple[int, str, str]] = {}  # image index -> (row number, label, value) of its first row
    rows = zip(table[key].tolist(), table["label"].tolist(), table[attribute].tolist(), strict=True)
    for row_number, (ref, label, value) in enumerate(rows, start=2):
        index = position.get(ref)
        if index is None:
            unknown.append(f"row {row_number} {ref!r}")
            continue
        if index in seen:
            first, first_label, first_value = seen[index]
            if (first_label, first_value) != (label, value):
                raise AuditError(
                    f"groups file '{path}' gives image {names[index]!r} twice with different values: "
                    f"rows {first} and {row_number}; allowed: one row per image"
                )
            continue
        seen[index] = (row_number, label, value)
        label_index = int(labels[index])
        if _class_index(label, classes) != label_index:
            mismatched.append(f"row {row_number} {ref!r} says {label}, the data says {classes[label_index]}")
        codes[index] = values.index(value)
    if unknown:
        raise AuditError(
            f"groups file '{path}' names {len(unknown)} image(s) not in the data, e.g. {unknown[0]}; "
            f"the '{key}' column must match the data's {'files' if key == 'file' else 'indices'}"
        )
    if mismatched:
        raise AuditError(f"groups file '{path}' disagrees with the data's labels: {mismatched[0]}")
    return Annotations(attribute, values, codes, len(table))


@dataclass
class Association:
    """The class each attribute value stands for (water -> waterbird), and where that came from."""

    classes: dict[str, int]  # attribute value -> class index, for every value of the evaluated images
    source: str  # "given", "training CSV 'FILE'" or "evaluated images"
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"code", "message"}


def parse_association(spec: str, notes: Annotations, classes: list[str]) -> Association:
    """--associate 'water:waterbird,land:landbird' (optionally prefixed 'place='): one class, by name or index, for
    every attribute value of the evaluated images."""
    where = f"association {spec!r}"
    text = spec
    head, sep, rest = spec.partition("=")
    if sep and ":" not in head and "," not in head:
        if head != notes.attribute:
            raise AuditError(f"{where} is for attribute {head!r}; the groups use {notes.attribute!r}")
        text = rest
    mapping: dict[str, int] = {}
    for item in text.split(","):
        value, colon, name = item.strip().rpartition(":")
        if not colon or not value:
            raise AuditError(f"{where}: {item!r} is not VALUE:CLASS; allowed: e.g. water:waterbird,land:landbird")
        if value not in notes.values:
            raise AuditError(
                f"{where}: value {value!r} does not occur in column {notes.attribute!r}; "
                f"allowed: {allowed(notes.values)}"
            )
        if value in mapping:
            raise AuditError(f"{where} names {value!r} twice; allowed: one class per value")
        k = _class_index(name, classes)
        if k is None:
            raise AuditError(f"{where}: class {name!r} is unknown; allowed: {_classes_allowed(classes)}")
        mapping[value] = k
    missing = [v for v in notes.values if v not in mapping]
    if missing:
        raise AuditError(
            f"{where} gives no class for {missing[0]!r}; allowed: a class for each of {allowed(notes.values)}"
        )
    return Association({v: mapping[v] for v in notes.values}, "given")


def majority_association(
    labels: torch.Tensor, codes: torch.Tensor, notes: Annotations, classes: list[str], source: str
) -> Association:
    """Each value's class = the class it co-occurs with most in (labels, codes); an exact tie goes to the lowest
    class index and is named in a warning. labels, codes: (N,) int64, codes index notes.values."""
    association, warnings = {}, []
    for v, value in enumerate(notes.values):
        counts = torch.bincount(labels[codes == v], minlength=len(classes))
        if counts.sum() == 0:
            raise AuditError(
                f"value {value!r} never occurs in column {notes.attribute!r} of {source}; "
                f"give its class with {option('--associate', 'associate')}"
            )
        tied = torch.nonzero(counts == counts.max()).view(-1).tolist()
        association[value] = tied[0]
        if len(tied) > 1:
            warnings.append(
                {
                    "code": "association_tie",
                    "message": (
                        f"{value!r} co-occurs equally often with {' and '.join(classes[k] for k in tied)} in {source}; "
                        f"took {classes[tied[0]]}; give the right one with {option('--associate', 'associate')}"
                    ),
                }
            )
    return Association(association, source, warnings)


def association_from_csv(path: str | Path, notes: Annotations, classes: list[str]) -> Association:
    """The majority class of each attribute value over a training split's metadata CSV (label and attribute
    columns; its images are not needed)."""
    path = Path(path)
    table = _read_csv(path, "training CSV", f"give a CSV with label and {notes.attribute!r} columns")
    for needed in ("label", notes.attribute):
        if needed not in table.columns:
            raise AuditError(f"training CSV '{path}' has no column {needed!r}; it has: {', '.join(table.columns)}")
    labels, codes = [], []
    rows = zip(table["label"].tolist(), table[notes.attribute].tolist(), strict=True)
    for row_number, (label, value) in enumerate(rows, start=2):
        k = _class_index(label, classes)
        if k is None:
            raise AuditError(
                f"training CSV '{path}' row {row_number} has label {label!r}; allowed: {_classes_allowed(classes)}"
            )
        if value in notes.values:  # values the evaluated images lack need no class
            labels.append(k)
            codes.append(notes.values.index(value))
    return majority_association(
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(codes, dtype=torch.long),
        notes,
        classes,
        f"training CSV '{path}'",
    )


def load_association(
    notes: Annotations, classes: list[str], associate: str | None = None, associate_from: str | Path | None = None
) -> Association | None:
    """The association the user gave (--associate VALUE:CLASS,... or --associate-from a training CSV), or None,
    which leaves annotated_metrics to take the evaluated images' majority class, with a warning."""
    if associate is not None and associate_from is not None:
        raise AuditError(
            f"give {option('--associate', 'associate')} or {option('--associate-from', 'associate_from')}, not both"
        )
    if associate is not None:
        return parse_association(associate, notes, classes)
    if associate_from is not None:
        return association_from_csv(associate_from, notes, classes)
    return None


@dataclass
class AnnotatedMetrics:
    attribute: str
    n: int  # annotated images measured
    accuracy: float
    worst_group_accuracy: float
    worst_group: str
    associated_class: dict[str, str]  # attribute value -> the class it stands for
    association_source: str  # where associated_class came from: given, a training CSV, or the evaluated images
    aligned_accuracy: float  # images whose label is their attribute's associated class
    conflicting_accuracy: float
    gap: float  # aligned - conflicting
    agreement_rate: float  # conflicting images predicted as their attribute's associated class
    groups: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"code", "message"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def annotated_metrics(
    preds: torch.Tensor,
    labels: torch.Tensor,
    notes: Annotations,
    classes: list[str],
    association: Association | None = None,
) -> AnnotatedMetrics:
    """Group accuracy for label x attribute value. preds, labels: (N,) int64; images without a CSV row are left out.

    `association` says which class each value stands for (aligned = label is that class); without one, the
    majority class per value over these same images is used, with a warning: on a split balanced within each
    class that rule maps every value to the largest class and the gap means nothing. Worst-group accuracy does
    not depend on it."""
    keep = notes.codes >= 0
    if not keep.any():
        raise AuditError(f"no image of the data is annotated with {notes.attribute!r}")
    preds, labels, codes = preds[keep], labels[keep], notes.codes[keep]
    correct = preds == labels
    k = len(classes)
    if association is None:
        association = majority_association(labels, codes, notes, classes, "evaluated images")
        used = ", ".join(f"{value}: {classes[c]}" for value, c in association.classes.items())
        association.warnings.insert(
            0,
            {
                "code": "association_from_evaluated_images",
                "message": (
                    f"each {notes.attribute!r} value's class is its majority class among the evaluated images ({used}); "
                    f"the aligned/conflicting split and the gap depend on it: give {option('--associate', 'associate')} "
                    f"VALUE:CLASS,... or {option('--associate-from', 'associate_from')} a training split's CSV"
                ),
            },
        )
    associated = torch.tensor([association.classes[value] for value in notes.values], dtype=torch.long)
    aligned = labels == associated[codes]
    groups: list[dict[str, Any]] = []
    for v, value in enumerate(notes.values):
        for c in range(k):
            members = (codes == v) & (labels == c)
            if members.any():
                groups.append(
                    {
                        "group": f"{classes[c]} x {value}",
                        "label": c,
                        "attribute": value,
                        "n": int(members.sum()),
                        "accuracy": float(correct[members].float().mean()),
                    }
                )
    worst = min(groups, key=lambda g: g["accuracy"])

    def mean(mask: torch.Tensor, values: torch.Tensor) -> float:
        return float(values[mask].float().mean()) if mask.any() else float("nan")

    acc_aligned, acc_conflicting = mean(aligned, correct), mean(~aligned, correct)
    return AnnotatedMetrics(
        attribute=notes.attribute,
        n=int(keep.sum()),
        accuracy=float(correct.float().mean()),
        worst_group_accuracy=worst["accuracy"],
        worst_group=worst["group"],
        associated_class={value: classes[int(associated[v])] for v, value in enumerate(notes.values)},
        association_source=association.source,
        aligned_accuracy=acc_aligned,
        conflicting_accuracy=acc_conflicting,
        gap=acc_aligned - acc_conflicting,
        agreement_rate=mean(~aligned, preds == associated[codes]),
        groups=groups,
        warnings=list(association.warnings),
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


def recoloured_error(tag: str, channels: int, model: str) -> AuditError:
    """The one message for a tag that turns the images RGB (background) in front of a model that cannot take them;
    `model` says what is known of the model ('the model takes 1 channel', "model 'X' fails on them (...)")."""
    return AuditError(
        f"tag '{tag}' makes the images RGB ({channels} channels); {model}: use {option('--tag', 'tag')} watermark or boat, "
        "or a model that takes RGB images"
    )


def check_takes_planted(model: nn.Module, images: torch.Tensor, planted: torch.Tensor, shortcut: Shortcut) -> None:
    """A tag that changes the channel count (background makes gray images RGB) needs a model that takes the new
    count; the model is known to take `images`, so a failure on two planted images is that mismatch, named."""
    before, after = images.shape[1], planted.shape[1]
    if before == after:
        return
    try:
        predict(model, planted[:2])
    except Exception:  # user models raise anything on a wrong shape; which one does not matter here
        channels = f"{before} channel{'s' if before > 1 else ''}"
        raise recoloured_error(shortcut.name, after, f"the model takes {channels}") from None


def tag_sensitivity(
    model: nn.Module,
    images: torch.Tensor | PixelStore,
    labels: torch.Tensor,
    shortcut: Shortcut,
    classes: list[str],
    *,
    target_class: int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    workers: int | None = None,
) -> TagSensitivity:
    """Plant each class's variant of the tag (or only target_class's) on every image, without retraining, and
    count how many predictions change and how many move to the tag's class.

    The images are read batch_size at a time (a store decodes files in `workers` processes); each batch is planted
    untagged and with every variant, and only the predictions are kept (int64, (1 + variants) x N). The tag's random
    draws (seeded by `seed`) are those of planting every image at once, and every variant gets the same ones, so
    the numbers do not depend on the batch size or the number of processes."""
    store = as_store(images)
    n = len(store)
    if len(labels) != n:
        raise AuditError(f"{n} images with {len(labels)} labels; allowed: one label per image")
    tags = [target_class] if target_class is not None else list(range(len(classes)))
    size = (store.shape[1], store.shape[2])
    first = store.read(torch.arange(min(2, n)))
    untagged, _ = shortcut.plant(
        first,
        torch.full((len(first),), -1),
        draws=shortcut.drawer(n, size, torch.Generator().manual_seed(seed)).take(0, len(first)),
    )
    check_takes_planted(model, first, untagged, shortcut)
    drawer = shortcut.drawer(n, size, torch.Generator().manual_seed(seed))
    device = model_device(model)
    parts = []
    with torch.no_grad(), eval_mode(model):
        for _, begin, end, x in my_batches_of(store, batch_size, workers=workers):
            draws = drawer.take(begin, end)
            predicted = [
                predicted_classes(model, shortcut.plant(x, torch.full((end - begin,), k), draws=draws)[0], device)
                for k in [-1, *tags]
            ]
            parts.append(torch.stack(predicted))
    gathered = gather_parts([torch.cat(parts, dim=1)] if parts else [])
    every = torch.cat(gathered, dim=1) if gathered else torch.zeros(1 + len(tags), 0, dtype=torch.long)
    base = every[0]
    variants = [_variant(k, preds, base, labels, classes) for k, preds in zip(tags, every[1:], strict=True)]
    return TagSensitivity(
        tag=shortcut.name,
        n=len(labels),
        accuracy_without_tag=float((base == labels).float().mean()),
        flip_rate=sum(v["flip_rate"] for v in variants) / len(variants),
        toward_rate=sum(v["toward_rate"] for v in variants) / len(variants),
        variants=variants,
    )


def _variant(
    k: int, preds: torch.Tensor, base: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> dict[str, Any]:
    """One variant's figures from per-sample predictions (N,) with class k's tag and without any tag."""
    flipped = preds != base
    destinations = torch.bincount(preds[flipped], minlength=len(classes))
    return {
        "tag_class": classes[k],
        "flip_rate": float(flipped.float().mean()),
        "toward_rate": float(((preds == k) & (base != k)).float().mean()),
        "accuracy_with_tag": float((preds == labels).float().mean()),
        "top_destination": classes[int(destinations.argmax())] if flipped.any() else "-",
    }
