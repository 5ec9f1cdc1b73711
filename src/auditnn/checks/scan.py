"""Scan: label information in low-level image statistics of the data, before any model (shortcut/scan.py).

It needs no model, so it does not ask the runner for the subject (needs_subject = False: that would train or load a
model): it reads the data the subject spec names itself, with load_scanned. Which images: a controlled dataset's
training split (a folder from `auditnn data build`, or one built here when the settings name a tag), a source's
training images (its official training split, or every image when it has none), or the base source's."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..data.controlled import BuildConfig, ShortcutConfig, build_controlled, load_controlled, manifest_digest
from ..data.sources import load_source, validate_images
from ..data.stream import PixelStore, as_store
from ..errors import AuditError
from ..report.schema import ANY, BOOL, INT, NUM, STR, metric_row
from ..report.tables import Table, fmt
from ..shortcut.scan import ScanResult, check_grid, check_scan_settings, scan
from ..subject import SubjectSpec, data_identity
from .base import CheckKind, CheckResult, Context, cli_only, of_check, register


@dataclass
class ScanSettings:
    """grid: cells per side of the heat map; folds: cross-validation folds; permutations: label permutations of the
    null; alpha: the family-wise level a flag needs (adjusted p < alpha). tag and rho (command only): plant that tag
    at that rho on the base source (data/controlled.py) and scan the training split."""

    grid: int = 4
    folds: int = 5
    permutations: int = 199
    alpha: float = 0.01
    tag: str | None = field(default=None, metadata=cli_only())
    rho: float = field(default=0.95, metadata=cli_only())
    size: int | None = field(default=None, metadata=cli_only())
    opacity: float | None = field(default=None, metadata=cli_only())
    position: str | None = field(default=None, metadata=cli_only())
    target_class: int | None = field(default=None, metadata=cli_only())


@dataclass
class Scanned:
    """The images a scan reads, their labels and class names, and how they were obtained (for the report)."""

    images: PixelStore
    labels: torch.Tensor
    classes: list[str]
    described: dict[str, Any]


def _planted(settings: ScanSettings) -> ShortcutConfig:
    return ShortcutConfig(settings.tag or "watermark", settings.size, settings.opacity, settings.position,
                          settings.target_class)  # fmt: skip


def build_config(settings: ScanSettings, spec: SubjectSpec, seed: int) -> BuildConfig:
    return BuildConfig(
        base=spec.base.text, shortcut=_planted(settings), rho=settings.rho, seed=seed,
        test_per_class=spec.test_per_class, data_root=spec.data_root, download=spec.download,
    )  # fmt: skip


def load_scanned(settings: ScanSettings, spec: SubjectSpec, seed: int) -> Scanned:
    """The images to scan (module docstring)."""
    if settings.tag is not None:
        ds = build_controlled(build_config(settings, spec, seed))
        shortcut = ds.manifest["shortcut"]
        described = {"base": spec.base.text, "split": "train", "tag": shortcut["tag"], "rho": settings.rho}
        return Scanned(as_store(ds.train.images), ds.train.labels, ds.classes, described)
    if spec.data is not None and not spec.data.is_source:
        ds = load_controlled(spec.data.arg)
        described = {"data": spec.data.text, "split": "train", "manifest_hash": manifest_digest(ds.manifest)}
        return Scanned(as_store(ds.train.images), ds.train.labels, ds.classes, described)
    given = spec.data or spec.base
    source = load_source(given, data_root=spec.data_root, download=spec.download, seed=seed, strict=spec.strict)
    train = source.train
    validate_images(train.store, train.labels, train.num_classes, f"data '{given.text}'")
    described = {"data": given.text, "split": "train" if source.test is not None else "all", **source.notes}
    return Scanned(train.store, train.labels, train.classes, described)


SCORE = {"name": STR, "features": INT, "accuracy": NUM, "lift": NUM, "p_value": NUM, "adjusted_p": NUM,
         "flagged": BOOL, "region": BOOL}  # fmt: skip


@register
class Scan(CheckKind[ScanSettings]):
    name = "scan"
    settings = ScanSettings
    thresholds = {
        "max_region_accuracy_lift": ("region_accuracy_lift", "max"),
        "max_property_accuracy_lift": ("property_accuracy_lift", "max"),
    }
    needs_subject = False  # data only: the runner must not train or load a model for it
    section_schema = {
        "n": INT,
        "chance": NUM,
        "grid": INT,
        "folds": INT,
        "permutations": INT,
        "alpha": NUM,
        "strongest_region": STR,
        "heat": [[NUM]],
        "scores": [SCORE],
        "data": ANY,
        "seconds": NUM,
        "check?": STR,
    }

    def validate(self, settings: ScanSettings, spec: SubjectSpec) -> None:
        """What can be refused before the data is read: the grid, folds, permutations against alpha, the tag."""
        if settings.grid < 1:
            raise AuditError(
                f"grid {settings.grid}; allowed: an integer >= 1 that divides the images' height and width"
            )
        check_scan_settings(settings.folds, settings.permutations, settings.alpha)
        if settings.tag is not None:
            build_config(settings, spec, 0).validate()

    def inputs(self, settings: ScanSettings, ctx: Context) -> str | None:
        """The scanned images' identity (pixels in memory, files by path, size and time) and labels."""
        scanned = load_scanned(settings, ctx.subject_spec, ctx.seed)
        return hashlib.sha256(data_identity(scanned.images, scanned.labels).encode()).hexdigest()

    def title(self, settings: ScanSettings) -> tuple[str, tuple[str, ...]]:
        return "scan", ()

    def measure(self, settings: ScanSettings, ctx: Context) -> CheckResult:
        start = time.perf_counter()
        scanned = load_scanned(settings, ctx.subject_spec, ctx.seed)
        check_grid(scanned.images.shape, settings.grid)
        progress = ctx.progress
        report = None if progress is None else (lambda name, i, n: progress(f"scan {name}", i + 1, n, {}))
        result = scan(
            scanned.images, scanned.labels, len(scanned.classes), grid=settings.grid, folds=settings.folds,
            permutations=settings.permutations, alpha=settings.alpha, seed=ctx.seed, progress=report,
        )  # fmt: skip
        return describe(result, scanned, time.perf_counter() - start)

    def tables(self, section: dict[str, Any]) -> list[Table]:
        suffix = of_check(section)
        ranked = [
            [s["name"], "region" if s["region"] else "property", str(s["features"]), fmt(s["accuracy"]),
             fmt(s["lift"]), fmt(s["p_value"]), fmt(s["adjusted_p"]), "FLAG" if s["flagged"] else ""]
            for s in section["scores"]
        ]  # fmt: skip
        columns = [
            "family",
            "kind",
            "features",
            "accuracy",
            "lift",
            "p",
            "adjusted p",
            f"adj. p < {section['alpha']:g}",
        ]
        heat = [[f"row {r}"] + [fmt(v) for v in row] for r, row in enumerate(section["heat"])]
        return [
            Table(
                f"Scan: label information by family (n {section['n']}, chance {fmt(section['chance'])}, "
                f"{section['folds']} folds, {section['permutations']} permutations){suffix}",
                columns,
                ranked,
            ),
            Table(
                f"Scan: accuracy lift per grid cell (strongest region: {section['strongest_region']}){suffix}",
                ["", *[f"col {c}" for c in range(len(section["heat"]))]],
                heat,
            ),
        ]


def describe(result: ScanResult, scanned: Scanned, seconds: float) -> CheckResult:
    """The result as rows (the two gated lifts, then each family's accuracy, lift and p-values), a section and
    pictures (the heat map over the mean image, exemplars of the strongest region)."""
    region, prop = result.max_lift(True), result.max_lift(False)
    rows = [
        metric_row("scan", "region_accuracy_lift", region),
        metric_row("scan", "property_accuracy_lift", prop),
        metric_row("scan", "flagged_families", float(len(result.flagged))),
    ]
    for s in result.scores:
        for metric in ("accuracy", "lift", "p_value", "adjusted_p"):
            rows.append(metric_row("scan", metric, getattr(s, metric), group=s.name))
    section = {
        "n": result.n,
        "chance": result.chance,
        "grid": result.grid,
        "folds": result.folds,
        "permutations": result.permutations,
        "alpha": result.alpha,
        "strongest_region": result.strongest_region,
        "heat": result.heat.tolist(),
        "scores": [asdict(s) for s in result.scores],  # box: the region's pixels (top, bottom, left, right) or None
        "exemplars": result.exemplars,
        "data": {**scanned.described, "classes": scanned.classes},
        "seconds": seconds,
    }
    chosen = [i for picks in result.exemplars for i in picks]
    pictures = {
        "heat": result.heat.float(),
        "mean_image": scanned.images.read(torch.arange(min(len(scanned.labels), 512))).mean(0, keepdim=True),
    }
    if chosen:
        pictures["exemplars"] = scanned.images.read(torch.tensor(chosen))
        pictures["exemplar_labels"] = scanned.labels[torch.tensor(chosen)]
    warnings = []
    if result.flagged:
        names = ", ".join(s.name for s in result.flagged[:5])
        warnings.append(
            {
                "code": "scan_flagged",
                "message": f"{len(result.flagged)} families predict the label above the permutation null "
                f"(adjusted p < {result.alpha:g}): {names}",
            }
        )
    return CheckResult(rows, section, pictures, warnings)
