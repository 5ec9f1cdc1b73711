"""Slices where a model fails, found without group labels (shortcut/discover.py): `discover` on any subject, and
`discovery`, which plants a shortcut, hides it from the discoverer and scores the slices against the images whose
shortcut disagrees with their label."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn

from ..data.controlled import BuildConfig, ControlledDataset, aligned_with_label, assign_shortcut_ids, build_controlled
from ..data.stream import PixelStore, as_store
from ..errors import AuditError, option
from ..models.features import embed_with_logits, named_layer
from ..report.schema import ANY, BATCH, BOOL, DATA, INT, NUM, NUM_OR_NULL, STR, metric_row
from ..report.tables import Table, fmt
from ..shortcut.discover import (
    Slice,
    cell_shares,
    distinguishing_features,
    distinguishing_regions,
    feature_names,
    find_slices,
    score_against,
)
from ..shortcut.metrics import logit_attribution
from ..shortcut.scan import feature_families
from ..subject import SubjectSpec
from ..train import train_on_controlled
from .base import NUMBER, CheckKind, CheckResult, Context, batch_size_for, cli_only, planted, register

GRIDS = (4, 3, 2, 1)  # the default grid: the first that divides the images
PICTURED = 3  # slices whose exemplars the page shows
EVAL_SEED = 1  # offset of the seed that draws the evaluation split's shortcut ids (the training split's is the seed)


@dataclass
class DiscoverSettings:
    """slices: mixture components (None: 2 x classes); min_slice_size: images a slice needs for the gate to judge it
    (None: 2 % of the images, at least 5); layer: the module whose output is the embedding (None: the classifier
    layer's input); grid: cells per side of the region grid (None: the first of 4, 3, 2, 1 dividing the images)."""

    slices: int | None = None
    min_slice_size: int | None = None
    layer: str | None = None
    grid: int | None = None
    batch_size: int | None = field(default=None, metadata=cli_only())


def validate_discover(settings: DiscoverSettings) -> None:
    if settings.slices is not None and settings.slices < 2:
        raise AuditError(f"slices {settings.slices}; allowed: at least 2 ({option('--slices', 'slices')})")
    if settings.min_slice_size is not None and settings.min_slice_size < 1:
        raise AuditError(f"min_slice_size {settings.min_slice_size}; allowed: at least 1")
    if settings.grid is not None and settings.grid < 1:
        raise AuditError(f"grid {settings.grid}; allowed: at least 1")


def _grid(settings: DiscoverSettings, shape: tuple[int, int, int]) -> int:
    from ..shortcut.scan import check_grid

    if settings.grid is not None:
        check_grid(shape, settings.grid)
        return settings.grid
    return next(g for g in GRIDS if shape[1] % g == 0 and shape[2] % g == 0)


def min_size(settings: DiscoverSettings, n: int) -> int:
    return settings.min_slice_size if settings.min_slice_size is not None else max(5, math.ceil(0.02 * n))


def check_labels(labels: torch.Tensor, classes: list[str]) -> None:
    """Every class needs 2 images: a slice is compared with the rest of its class."""
    if labels.numel() == 0:
        raise AuditError("the data has no labelled images; allowed: labelled images, at least 2 of each class")
    counts = torch.bincount(labels.long(), minlength=len(classes))
    short = [k for k in range(len(classes)) if int(counts[k]) < 2]
    if short:
        k = short[0]
        raise AuditError(
            f"class '{classes[k]}' has {int(counts[k])} image(s); allowed: at least 2 images of each class"
        )


def discover_on(
    model: nn.Module,
    images: PixelStore,
    labels: torch.Tensor,
    classes: list[str],
    settings: DiscoverSettings,
    *,
    device: torch.device,
    batch_size: int,
    seed: int,
) -> tuple[list[Slice], dict[str, Any], dict[str, torch.Tensor]]:
    """(ranked slices, the section's slice fields, pictures) of the model on the labelled images."""
    check_labels(labels, classes)
    n = len(labels)
    if settings.slices is not None and settings.slices > n // 2:
        raise AuditError(
            f"{option('--slices', 'slices')} {settings.slices} for {n} images; allowed: 2 to {max(2, n // 2)} "
            "(at least 2 images a slice on average)"
        )
    if settings.min_slice_size is not None and settings.min_slice_size > n:
        raise AuditError(
            f"{option('--min-slice-size', 'min_slice_size')} {settings.min_slice_size} for {n} images; allowed: 1 "
            f"to {n} (a larger minimum leaves no slice to judge)"
        )
    if settings.layer is not None:
        named_layer(model, settings.layer)  # before anything runs
    grid = _grid(settings, images.shape)
    start = time.perf_counter()
    features, logits = embed_with_logits(
        model, images, layer=settings.layer, batch_size=batch_size, device=device, num_classes=len(classes)
    )
    bad = int((~torch.isfinite(features)).any(1).sum())
    if bad:
        where = "its penultimate layer" if settings.layer is None else f"layer '{settings.layer}'"
        raise AuditError(
            f"the model's features at {where} are NaN or infinite for {bad} of {len(features)} images; allowed: a "
            "model whose features are finite"
        )
    k = settings.slices if settings.slices is not None else 2 * len(classes)
    slices = find_slices(features, logits, labels, k, seed=seed)
    values, names = feature_names(feature_families(images, grid, batch_size=batch_size), images.shape[0])
    predicted = logits.argmax(1)
    shares = torch.cat(  # grad x input of the predicted class, kept as each image's share per grid cell
        [
            cell_shares(logit_attribution(model, x, predicted[begin:end]), grid)
            for begin, end, x in images.batches(batch_size)
        ]
    )
    n, smallest = len(labels), min_size(settings, len(labels))
    rows, pictures = [], {}
    for rank, s in enumerate(slices, start=1):
        row = {
            "rank": rank,
            "size": s.size,
            "share": s.size / n,
            "accuracy": s.accuracy,
            "rest_accuracy": s.rest_accuracy,
            "compared_accuracy": s.compared_accuracy,
            "gap": s.gap,
            "gap_low": s.gap_low,
            "gap_high": s.gap_high,
            "score": s.score if math.isfinite(s.score) else None,
            "judged": s.size >= smallest,
            "classes": {classes[c]: count for c, count in s.class_counts.items()},
            "features": distinguishing_features(values, names, labels, s.members, len(classes)),
            "regions": distinguishing_regions(shares, grid, labels, s.members, len(classes)),
            "exemplars": s.exemplars.tolist(),
        }
        rows.append(row)
        if rank <= PICTURED:
            pictures[f"slice-{rank}/images"] = images.read(s.exemplars)
            pictures[f"slice-{rank}/labels"] = labels[s.exemplars].clone()
            pictures[f"slice-{rank}/predictions"] = predicted[s.exemplars].clone()
    section = {
        "n": n,
        "accuracy": float((predicted == labels).double().mean()),
        "components": k,
        "min_slice_size": smallest,
        "grid": grid,
        "layer": settings.layer or "the classifier layer's input",
        "embedding_dims": int(features.shape[1]),
        "seconds": time.perf_counter() - start,
        "slices": rows,
    }
    return slices, section, pictures


def gate_rows(section: dict[str, Any], kind: str, **labels: Any) -> list[dict[str, Any]]:
    """The largest gap among the slices of at least min_slice_size images, the lower end of its interval, and how
    many of those slices have an interval above 0."""
    judged = [r for r in section["slices"] if r["judged"] and r["gap"] is not None]
    worst = max(judged, key=lambda r: r["gap"], default=None)
    significant = sum(1 for r in judged if r["gap_low"] > 0)
    return [
        metric_row(kind, "slice_gap", None if worst is None else worst["gap"], **labels),
        metric_row(kind, "slice_gap_low", None if worst is None else worst["gap_low"], **labels),
        metric_row(kind, "significant_slices", significant, **labels),
        metric_row(kind, "slices", len(section["slices"]), **labels),
    ]


SLICE_SCHEMA = {
    "rank": INT,
    "size": INT,
    "accuracy": NUM,
    "rest_accuracy": NUM_OR_NULL,
    "compared_accuracy?": NUM_OR_NULL,
    "gap": NUM_OR_NULL,
    "gap_low": NUM_OR_NULL,
    "gap_high": NUM_OR_NULL,
    "judged": BOOL,
    "classes": {"*": INT},
    "features": [{"feature": STR, "smd": NUM}],
    "regions": [{"region": STR, "slice_share": NUM, "rest_share": NUM, "difference": NUM}],
}
SECTION_SCHEMA = {
    "n": INT,
    "accuracy": NUM,
    "components": INT,
    "min_slice_size": INT,
    "grid": INT,
    "layer": STR,
    "slices": [SLICE_SCHEMA],
}


def slice_table(section: dict[str, Any], title: str) -> Table:
    columns = ["rank", "size", "acc", "rest acc", "gap [95% CI]", "classes", "set apart by", "looks at"]
    body = []
    for r in section["slices"]:
        if not r["judged"]:
            continue
        gap = "-" if r["gap"] is None else f"{fmt(r['gap'])} [{fmt(r['gap_low'])}, {fmt(r['gap_high'])}]"
        classes = sorted(r["classes"].items(), key=lambda kv: -kv[1])
        body.append(
            [
                str(r["rank"]),
                str(r["size"]),
                fmt(r["accuracy"]),
                fmt(r["rest_accuracy"]),
                gap,
                ", ".join(f"{c}:{n}" for c, n in classes[:3]) + (" ..." if len(classes) > 3 else ""),
                "; ".join(f"{f['feature']} {f['smd']:+.1f}sd" for f in r["features"][:1]) or "-",
                ", ".join(f"{g['region']} {g['difference']:+.2f}" for g in r["regions"][:1]) or "-",
            ]
        )
    small = sum(1 for r in section["slices"] if not r["judged"])
    note = f"; {small} slice(s) under {section['min_slice_size']} images left out" if small else ""
    return Table(f"{title} ({section['n']} images, {section['components']} components{note})", columns, body)


@register
class Discover(CheckKind[DiscoverSettings]):
    name = "discover"
    settings = DiscoverSettings
    thresholds = {"max_slice_gap": ("slice_gap", "max")}
    section_schema = {**SECTION_SCHEMA, "model": STR, "data": DATA, "batch?": BATCH}

    def validate(self, settings: DiscoverSettings, spec: SubjectSpec) -> None:
        validate_discover(settings)

    def title(self, settings: DiscoverSettings) -> tuple[str, tuple[str, ...]]:
        return "discover", ()

    def measure(self, settings: DiscoverSettings, ctx: Context) -> CheckResult:
        subject = ctx.subject
        assert subject is not None  # needs_subject: the runner resolved it
        batch = batch_size_for(ctx, settings.batch_size)
        data = subject.data
        _, section, pictures = discover_on(
            subject.model,
            data.test,
            data.test_labels,
            data.classes,
            settings,
            device=ctx.device,
            batch_size=batch["size"],
            seed=ctx.seed,
        )
        section = {**section, "model": subject.source, "data": subject.described, "batch": batch}
        return CheckResult(gate_rows(section, "discover"), section, pictures)

    def tables(self, section: dict[str, Any]) -> list[Table]:
        return [slice_table(section, f"Slices where the model ({section['model']}) fails")]


@dataclass
class DiscoverySettings:
    """A shortcut planted at rho (tag and its salience as in `shortcut`), a model trained on it (epochs: None for
    the model's; a given trained model is measured as it is), and discover (its settings) run on an evaluation split
    at the training rho."""

    tag: str = "watermark"
    rho: float = field(default=0.95, metadata={"file": NUMBER})
    size: int | None = None
    opacity: float | None = None
    position: str | None = None
    target_class: int | None = None
    epochs: int | None = None
    slices: int | None = None
    min_slice_size: int | None = None
    layer: str | None = None
    grid: int | None = None
    batch_size: int | None = field(default=None, metadata=cli_only())


def evaluation_split(
    dataset: ControlledDataset, rho: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, conflicting (N,) bool) at the training rho from the held-out test images: each base test
    image once, with the shortcut id a fresh draw at rho gives it (assign_shortcut_ids, seeded by seed + EVAL_SEED),
    taken from the balanced test split, which holds every base image with every id. The training and validation
    images are never among them."""
    clean, test = dataset.test_clean, dataset.test
    n, target = len(clean), dataset.target_class
    generator = torch.Generator().manual_seed(seed + EVAL_SEED)
    ids = assign_shortcut_ids(clean.labels, dataset.num_classes, rho, generator, target)
    variant = ids if target is None else (ids == target).long()  # the balanced split's order: -1 then target
    index = variant * n + torch.arange(n)
    if not (test.labels[index] == clean.labels).all() or not (test.shortcut_ids[index] == ids).all():
        raise AssertionError("the balanced test split is not ordered by shortcut variant")
    conflicting = ~aligned_with_label(clean.labels, ids, target)
    return test.images[index], clean.labels.clone(), conflicting


@register
class Discovery(CheckKind[DiscoverySettings]):
    name = "discovery"
    settings = DiscoverySettings
    thresholds = {
        "min_top_precision": ("top_precision", "min"),
        "min_top_recall": ("top_recall", "min"),
    }
    needs_subject = False
    section_schema = {
        **SECTION_SCHEMA,
        "tag": STR,
        "rho": NUM,
        "data": DATA,
        "evaluation": STR,
        "training": ANY,
        "scores": {"n_truth": INT, "top_precision": NUM, "top_recall": NUM, "best_rank": INT, "best_f1": NUM},
    }

    def _discover(self, settings: DiscoverySettings) -> DiscoverSettings:
        return DiscoverSettings(
            settings.slices, settings.min_slice_size, settings.layer, settings.grid, settings.batch_size
        )

    def validate(self, settings: DiscoverySettings, spec: SubjectSpec) -> None:
        validate_discover(self._discover(settings))
        BuildConfig(base=spec.base.text, shortcut=planted(settings), rho=settings.rho).validate()

    def title(self, settings: DiscoverySettings) -> tuple[str, tuple[str, ...]]:
        return f"discovery {settings.tag} rho={settings.rho:g}", ("tag", "rho")

    def labels(self, settings: DiscoverySettings) -> dict[str, Any]:
        return {"tag": settings.tag, "rho": settings.rho}

    def measure(self, settings: DiscoverySettings, ctx: Context) -> CheckResult:
        from ..data.sources import load_source

        spec = ctx.subject_spec
        base = load_source(spec.base, data_root=spec.data_root, download=spec.download, seed=ctx.seed)
        config = BuildConfig(
            base=spec.base.text,
            shortcut=planted(settings),
            rho=settings.rho,
            seed=ctx.seed,
            test_per_class=spec.test_per_class,
            data_root=spec.data_root,
            download=spec.download,
        )
        dataset = build_controlled(config, base)
        training: dict[str, Any] | None = None
        model: nn.Module
        if spec.model.is_architecture:
            train = spec.train if settings.epochs is None else replace(spec.train, epochs=settings.epochs)
            model, fit, _ = train_on_controlled(dataset, spec.model.text, train, ctx.device, width=spec.width)
            training = {"epochs": fit.epochs, "seconds": fit.seconds}
        else:  # a trained model, measured on the planted images as they are (as the shortcut check does)
            from .shortcut import Shortcut

            model = Shortcut()._given(dataset, ctx)
        images, labels, conflicting = evaluation_split(dataset, settings.rho, ctx.seed)
        batch = settings.batch_size or 256
        slices, section, pictures = discover_on(
            model,
            as_store(images),
            labels,
            dataset.classes,
            self._discover(settings),
            device=ctx.device,
            batch_size=batch,
            seed=ctx.seed,
        )  # the discoverer sees the images and labels only: the conflicting mask is used below, to score
        scores = score_against(slices, conflicting)
        section = {
            **section,
            "tag": settings.tag,
            "rho": settings.rho,
            "data": {"classes": dataset.classes, "n_test": len(labels)},
            "evaluation": (
                "the held-out test images, each once, its shortcut id drawn afresh at the training rho "
                f"({int(conflicting.sum())} of {len(labels)} conflicting)"
            ),
            "training": training,
            "scores": scores,
        }
        labels_ = self.labels(settings)
        rows = [
            metric_row("discovery", key, scores[key], **labels_)
            for key in ("top_precision", "top_recall", "best_rank", "best_f1")
        ] + gate_rows(section, "discovery", **labels_)
        return CheckResult(rows, section, pictures)

    def tables(self, section: dict[str, Any]) -> list[Table]:
        s = section["scores"]
        scores = Table(
            f"Discovery against the planted {section['tag']} at rho {fmt(section['rho'], 2)} "
            f"({s['n_truth']} conflicting images of {section['n']})",
            ["top slice precision", "top slice recall", "best slice (F1) rank", "best F1"],
            [[fmt(s["top_precision"]), fmt(s["top_recall"]), str(s["best_rank"]), fmt(s["best_f1"])]],
        )
        return [scores, slice_table(section, "Slices")]
