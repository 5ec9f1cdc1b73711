"""Shortcut reliance: plant a shortcut at correlation rho, train a model on it (or take a trained one), and measure
how much the model follows the shortcut. It builds its own data, one controlled dataset per rho."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..data.controlled import (
    BuildConfig,
    ControlledDataset,
    build_controlled,
    load_controlled,
    manifest_digest,
    read_manifest,
)
from ..data.shortcuts import make_shortcut
from ..data.sources import load_source
from ..data.stream import as_store
from ..errors import AuditError, allowed
from ..models import save_model_dir
from ..report.schema import ANY, NUM, NUM_OR_NULL, STR, metric_row
from ..report.tables import Table, fmt
from ..runtime import share_weights_from_first
from ..shortcut.annotated import recoloured_error
from ..shortcut.metrics import ATTRIBUTIONS, measure_reliance, shortcut_examples
from ..subject import EvalData, SubjectSpec, data_digest, resolve_subject
from ..train import TrainConfig, train_on_controlled
from .base import NUMBER, CheckKind, CheckResult, Context, cli_only, first_layer_pictures, planted, register

SCALARS = (
    "clean_accuracy",
    "aligned_accuracy",
    "conflicting_accuracy",
    "gap",
    "worst_group_accuracy",
    "reliance",
    "follow_rate",
    "follow_rate_normalized",
    "swap_flip_rate",
    "remove_flip_rate",
    "attribution_mass",
    "attribution_chance",
    "attribution_ratio",
    "mask_share",
)
NEWER = ("attribution_chance", "attribution_ratio")  # absent from reports written before they were measured
SHOWN = (  # (metric key, label shown)
    ("clean_accuracy", "accuracy, no shortcut"),
    ("aligned_accuracy", "accuracy, aligned"),
    ("conflicting_accuracy", "accuracy, conflicting"),
    ("gap", "gap (aligned - conflicting)"),
    ("worst_group_accuracy", "worst-group accuracy"),
    ("reliance", "reliance"),
    ("follow_rate_normalized", "follows shortcut (vs chance)"),
    ("swap_flip_rate", "flips when shortcut swapped"),
    ("remove_flip_rate", "flips when shortcut removed"),
    ("attribution_mass", "attribution inside shortcut"),
    ("attribution_chance", "chance level (shortcut's share of |x|)"),
    ("attribution_ratio", "attribution / chance"),
    ("mask_share", "shortcut's share of pixels"),
)


@dataclass
class ShortcutSettings:
    """rho: P(shortcut agrees with label) in the training data, one dataset and model per value; epochs: None for
    the model's; data: a dataset folder from `auditnn data build` instead of building one; save_models: keep each
    trained model in the output folder (models/rho-<rho>/)."""

    tag: str
    rho: list[float] = field(default_factory=lambda: [0.95], metadata={"file": NUMBER})
    size: int | None = None
    opacity: float | None = None
    position: str | None = None
    target_class: int | None = None
    epochs: int | None = None
    attribution: str = field(default="gradxinput", metadata=cli_only())
    data: str | None = field(default=None, metadata=cli_only())
    save_models: bool = field(default=False, metadata=cli_only())


def _train_config(settings: ShortcutSettings, spec: SubjectSpec) -> TrainConfig:
    """The subject's training settings, with the check's epochs when it gives them."""
    return spec.train if settings.epochs is None else replace(spec.train, epochs=settings.epochs)


def build_config(settings: ShortcutSettings, spec: SubjectSpec, rho: float, seed: int) -> BuildConfig:
    return BuildConfig(
        base=spec.base.text,
        shortcut=planted(settings),
        rho=rho,
        seed=seed,
        test_per_class=spec.test_per_class,
        data_root=spec.data_root,
        download=spec.download,
    )


@register
class Shortcut(CheckKind[ShortcutSettings]):
    name = "shortcut"
    settings = ShortcutSettings
    thresholds = {
        "max_reliance": ("reliance", "max"),
        "min_worst_group_accuracy": ("worst_group_accuracy", "min"),
        "max_gap": ("gap", "max"),
    }
    section_schema = {
        "rows": [
            {
                "rho": NUM,
                "check?": STR,
                "training?": ANY,
                "dataset": {"base": STR, "shortcut": {"tag": STR}, "classes?": [STR]},
                "metrics": {
                    "worst_group": STR,
                    **{k: NUM_OR_NULL for k in SCALARS if k not in ("follow_rate", *NEWER)},
                    **{f"{k}?": NUM_OR_NULL for k in NEWER},
                },
            }
        ]
    }
    needs_subject = False
    merged = True

    def validate(self, settings: ShortcutSettings, spec: SubjectSpec) -> None:
        if not settings.rho:
            raise AuditError("rho list is empty; allowed: one or more values in [0, 1]")
        for rho in settings.rho:
            build_config(settings, spec, rho, 0).validate()
        if settings.attribution not in ATTRIBUTIONS:
            raise AuditError(f"attribution '{settings.attribution}' is unknown; allowed: {allowed(ATTRIBUTIONS)}")
        if len(settings.rho) > 1 and (settings.data is not None or not spec.model.is_architecture):
            given = "a built dataset" if settings.data is not None else f"model '{spec.model.text}'"
            raise AuditError(
                f"a rho sweep builds one dataset and trains one model per rho, but {given} is given; "
                "allowed: a single rho with a given dataset or trained model"
            )
        _train_config(settings, spec).validate()

    def inputs(self, settings: ShortcutSettings, ctx: Context) -> str | None:
        """The data it builds from (a built dataset's manifest, which holds its files' checksums, or the base images
        and labels). A given model's result is never reused: its code may change behind the same spec, and
        measuring it costs no training."""
        spec = ctx.subject_spec
        if not spec.model.is_architecture:
            return None
        if settings.data is not None:
            return manifest_digest(read_manifest(settings.data))
        base = load_source(spec.base, data_root=spec.data_root, download=spec.download, seed=ctx.seed)
        splits = [base.train] + ([] if base.test is None else [base.test])
        return "\n".join(data_digest(s.images, s.labels) for s in splits)

    def title(self, settings: ShortcutSettings) -> tuple[str, tuple[str, ...]]:
        return f"shortcut {settings.tag} rho={settings.rho[0]:g}", ("tag", "rho")

    def labels(self, settings: ShortcutSettings) -> dict[str, Any]:
        return {"tag": settings.tag, "rho": settings.rho[0]}

    def picture_key(self, key: str, name: str | None, settings: ShortcutSettings, ctx: Context) -> str | None:
        """A command's: shortcut/<tag>/rho=<rho>/<picture>. An audit's: shortcut/<check>/<picture>, its single rho
        left out; the page draws the first layer once, the audited model's when there is one."""
        if name is None:
            return f"shortcut/{settings.tag}/{key}"
        if ctx.subject is not None and key.endswith("/first_layer"):
            return None
        return f"shortcut/{name}/{key.split('/', 1)[1]}"

    def tables(self, section: dict[str, Any]) -> list[Table]:
        """One column per rho, one row per metric: narrow enough for a terminal whatever the sweep."""
        runs = section["rows"]
        columns = ["metric"] + [
            f"rho {fmt(r['rho'], 2)}" + (" (given model)" if r.get("training") is None else "") for r in runs
        ]
        rows = [[label] + [fmt(r["metrics"][key]) for r in runs] for key, label in SHOWN]
        rows.insert(5, ["worst group (label x shortcut)"] + [r["metrics"]["worst_group"] for r in runs])
        first = runs[0]["dataset"]
        return [Table(f"Shortcut reliance: {first['shortcut']['tag']} on {first['base']}", columns, rows)]

    def measure(self, settings: ShortcutSettings, ctx: Context) -> CheckResult:
        start = time.perf_counter()
        base = (
            None
            if settings.data is not None
            else load_source(
                ctx.subject_spec.base,
                data_root=ctx.subject_spec.data_root,
                download=ctx.subject_spec.download,
                seed=ctx.seed,
            )
        )
        given: nn.Module | None = None
        result = CheckResult([], {"device": str(ctx.device), "seconds": 0.0, "rows": []})
        for rho in settings.rho:
            row_start = time.perf_counter()
            dataset = (
                load_controlled(settings.data)
                if settings.data is not None
                else build_controlled(build_config(settings, ctx.subject_spec, rho, ctx.seed), base)
            )
            if ctx.subject_spec.model.is_architecture:
                model, training, files = self._trained(settings, dataset, ctx)
            else:
                given = given or self._given(dataset, ctx)
                model, training, files = given, None, {}
            self._describe(result, settings, model, dataset, training, files, ctx, time.perf_counter() - row_start)
        result.section["seconds"] = time.perf_counter() - start
        return result

    def _trained(
        self, settings: ShortcutSettings, dataset: ControlledDataset, ctx: Context
    ) -> tuple[nn.Module, dict[str, Any], dict[str, Callable[[Path], Any]]]:
        """(model trained on the dataset, its training record, the files that keep it with save_models)."""
        spec, rho = ctx.subject_spec, dataset.manifest["rho"]
        progress = ctx.progress
        report = None if progress is None else (lambda e, n, r: progress(f"rho={rho:g}", e, n, r))
        train = _train_config(settings, spec)
        model, fit, card = train_on_controlled(
            dataset, spec.model.text, train, ctx.device, width=spec.width, progress=report
        )
        share_weights_from_first(model)
        keep = settings.save_models and ctx.out_dir is not None
        files = {f"models/rho-{rho:g}": lambda path: save_model_dir(model, card, path)} if keep else {}
        return model, asdict(fit), files

    def _given(self, dataset: ControlledDataset, ctx: Context) -> nn.Module:
        """The user's trained model, measured on the dataset's images as they are (never converted)."""
        spec, channels = ctx.subject_spec.model, dataset.test.images.shape[1]
        # A tag that paints gray images RGB (background) is the likely reason a gray model does not fit: say so.
        recoloured = make_shortcut(dataset.tag, dataset.num_classes).output_channels(1) != 1

        def takes_channels(card: dict[str, Any]) -> None:
            declared = card.get("input_shape")
            if recoloured and declared and declared[0] is not None and declared[0] != channels:
                plural = "s" if declared[0] > 1 else ""
                raise recoloured_error(
                    dataset.tag, channels, f"model '{spec.text}' takes {declared[0]} channel{plural}"
                )

        train, test = as_store(dataset.train.images), as_store(dataset.test.images)
        data = EvalData(train, dataset.train.labels, test, dataset.test.labels, dataset.classes, {})
        try:
            return resolve_subject(
                spec, data, ctx.subject_spec.train, ctx.device, conform=False, check_card=takes_channels
            ).model
        except AuditError as exc:
            if not recoloured or "makes the images RGB" in str(exc):
                raise
            raise recoloured_error(dataset.tag, channels, f"model '{spec.text}' fails on them ({exc})") from None

    def _describe(
        self,
        result: CheckResult,
        settings: ShortcutSettings,
        model: nn.Module,
        dataset: ControlledDataset,
        training: dict[str, Any] | None,
        files: dict[str, Callable[[Path], Any]],
        ctx: Context,
        seconds: float,
    ) -> None:
        """Add one rho's measurement to the result: its rows, its section row, pictures and files."""
        metrics = measure_reliance(model, dataset, attribution=settings.attribution)
        rho, tag = (
            dataset.manifest["rho"],
            dataset.tag,
        )  # the dataset's; with a given model it shaped the test split only
        result.rows += [metric_row("shortcut", name, getattr(metrics, name), tag=tag, rho=rho) for name in SCALARS]
        result.rows += [
            metric_row("shortcut", "group_accuracy", g["accuracy"], group=g["group"], tag=tag, rho=rho)
            for g in metrics.groups
        ]
        model_dir = None if not files or ctx.out_dir is None else str(ctx.out_dir / next(iter(files)))
        result.section["rows"].append(
            {
                "rho": rho,
                "metrics": asdict(metrics),
                "dataset": {
                    k: dataset.manifest.get(k)
                    for k in ("base", "shortcut", "rho", "aligned_share", "seed", "sizes", "classes")
                },
                "training": training,
                "model_dir": model_dir,
                "seconds": seconds,
            }
        )
        pictures = {**shortcut_examples(model, dataset), **first_layer_pictures(model, dataset.test.images.shape[1:])}
        result.pictures.update({f"rho={rho:g}/{k}": v for k, v in pictures.items()})
        result.files.update(files)
