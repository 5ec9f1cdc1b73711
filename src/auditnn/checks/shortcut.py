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
    Split,
    build_controlled,
    load_controlled,
    manifest_digest,
    read_manifest,
)
from ..data.shortcuts import make_shortcut
from ..data.sources import load_source
from ..data.stream import as_store
from ..errors import AuditError, allowed, option
from ..models import PixelModel, save_model_dir
from ..report.schema import ANY, NUM, NUM_OR_NULL, STR, metric_row
from ..report.tables import Table, fmt
from ..runtime import share_weights_from_first
from ..shortcut.annotated import recoloured_error
from ..shortcut.metrics import ATTRIBUTIONS, measure_reliance, shortcut_examples
from ..shortcut.mitigate import MitigationConfig, Trained, train_methods, validate_methods
from ..subject import EvalData, SubjectSpec, data_digest, resolve_subject
from ..train import TrainConfig, train_on_controlled
from .base import NUMBER, STRING, CheckKind, CheckResult, Context, cli_only, first_layer_pictures, planted, register

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
    trained model in the output folder (models/rho-<rho>/, with mitigation models/rho-<rho>/<method>/).
    mitigation: remedies to train, one model each (shortcut/mitigate.py: erm, reweight, groupdro, jtt, dfr); empty:
    today's single model, its rows unlabelled; an audit file names one, whose rows its thresholds judge. upweight,
    jtt_epochs: JTT's; groupdro_eta, groupdro_adjustment: group DRO's."""

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
    mitigation: list[str] = field(default_factory=list, metadata={"file": STRING})
    upweight: float = 20.0
    jtt_epochs: int = 2
    groupdro_eta: float = 0.01
    groupdro_adjustment: float = 0.0

    def mitigation_config(self) -> MitigationConfig:
        return MitigationConfig(self.upweight, self.jtt_epochs, self.groupdro_eta, self.groupdro_adjustment)


def _train_config(settings: ShortcutSettings, spec: SubjectSpec) -> TrainConfig:
    """The subject's training settings, with the check's epochs when it gives them."""
    return spec.train if settings.epochs is None else replace(spec.train, epochs=settings.epochs)


TUNING = {"upweight": "jtt", "jtt_epochs": "jtt", "groupdro_eta": "groupdro", "groupdro_adjustment": "groupdro"}


def balanced_held_out(config: BuildConfig, base: Any) -> Split:
    """DFR's small group-balanced held-out set (Kirichenko et al. 2022 retrain the last layer on one): the validation
    split's images planted again at rho = 1/2, half aligned and half conflicting. Which base images form the
    validation split is drawn before any draw that depends on rho, so these are the same images as the dataset's
    validation split, never a training or test image."""
    return build_controlled(replace(config, rho=DFR_HELD_OUT_RHO), base).val


DFR_HELD_OUT_RHO = 0.5


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
                "method?": STR,
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
        train = _train_config(settings, spec)
        train.validate()
        defaults = self.defaults()
        for key, method in TUNING.items():  # a method's setting without the method: refused, never silently ignored
            if getattr(settings, key) != defaults[key] and method not in settings.mitigation:
                raise AuditError(
                    f"{option('--' + key.replace('_', '-'), key)} {getattr(settings, key)} applies to {method}; "
                    f"allowed: leave it out or add {method} to the mitigation"
                )
        if settings.jtt_epochs != defaults["jtt_epochs"] and settings.jtt_epochs > train.epochs:
            raise AuditError(
                f"{option('--jtt-epochs', 'jtt_epochs')} {settings.jtt_epochs} is more than the {train.epochs} "
                "epochs of training; allowed: a first pass no longer than the training it precedes (the default, 2, is "
                "cut to the training's epochs)"
            )
        if settings.mitigation:
            validate_methods(settings.mitigation)
            settings.mitigation_config().validate()
            if not spec.model.is_architecture:
                raise AuditError(
                    f"mitigation trains one model per method, but model '{spec.model.text}' is trained already; "
                    "allowed: an architecture (mlp, cnn, resnet18)"
                )

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
        method = {"method": settings.mitigation[0]} if len(settings.mitigation) == 1 else {}
        return {"tag": settings.tag, "rho": settings.rho[0], **method}

    def picture_key(self, key: str, name: str | None, settings: ShortcutSettings, ctx: Context) -> str | None:
        """A command's: shortcut/<tag>/rho=<rho>/<picture>. An audit's: shortcut/<check>/<picture>, its single rho
        left out; the page draws the first layer once, the audited model's when there is one."""
        if name is None:
            return f"shortcut/{settings.tag}/{key}"
        if ctx.subject is not None and key.endswith("/first_layer"):
            return None
        return f"shortcut/{name}/{key.split('/', 1)[1]}"

    def tables(self, section: dict[str, Any]) -> list[Table]:
        """One column per rho (and method), one row per metric: narrow enough for a terminal whatever the sweep."""
        runs = section["rows"]
        sweep = len({r["rho"] for r in runs}) > 1
        columns = ["metric"] + [_column(r, sweep) for r in runs]
        rows = [[label] + [fmt(r["metrics"][key]) for r in runs] for key, label in SHOWN]
        rows.insert(5, ["worst group (label x shortcut)"] + [r["metrics"]["worst_group"] for r in runs])
        if any("method" in r for r in runs):
            rows.append(
                ["training seconds (all passes)"] + [fmt((r.get("training") or {}).get("seconds")) for r in runs]
            )
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
            if settings.mitigation:
                held_out = (
                    None
                    if settings.data is not None or "dfr" not in settings.mitigation
                    else balanced_held_out(build_config(settings, ctx.subject_spec, rho, ctx.seed), base)
                )
                for trained in self._mitigated(settings, dataset, ctx, held_out):
                    dfr = trained.details.get("dfr")
                    if dfr is not None and not dfr["converged"]:
                        result.warnings.append(
                            {
                                "code": "dfr_not_converged",
                                "message": f"at rho {rho:g}, a DFR retraining fit stopped before it converged (l1 "
                                f"{dfr['l1']:g}); the retrained layer may be short of its optimum",
                            }
                        )
                    files = self._kept(settings, trained.model, trained.card, dataset, ctx, trained.method)
                    measured = time.perf_counter()
                    self._describe(
                        result, settings, trained.model, dataset, trained.record(), files, ctx, 0.0, trained.method
                    )
                    result.section["rows"][-1]["seconds"] = trained.seconds + time.perf_counter() - measured
                continue
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
        return model, asdict(fit), self._kept(settings, model, card, dataset, ctx)

    def _kept(
        self,
        settings: ShortcutSettings,
        model: PixelModel,
        card: dict[str, Any],
        dataset: ControlledDataset,
        ctx: Context,
        method: str | None = None,
    ) -> dict[str, Callable[[Path], Any]]:
        """The files that keep a trained model with save_models: models/rho-<rho>[/<method>]."""
        if not settings.save_models or ctx.out_dir is None:
            return {}
        folder = f"models/rho-{dataset.manifest['rho']:g}" + ("" if method is None else f"/{method}")
        return {folder: lambda path: save_model_dir(model, card, path)}

    def _mitigated(
        self, settings: ShortcutSettings, dataset: ControlledDataset, ctx: Context, held_out: Split | None
    ) -> list[Trained]:
        """One model per mitigation method on this dataset (shortcut/mitigate.py), in the order given; held_out: DFR's
        group-balanced held-out set (None: the dataset's validation split)."""
        spec, rho = ctx.subject_spec, dataset.manifest["rho"]
        progress = ctx.progress

        def report(method: str) -> Any:
            return None if progress is None else (lambda e, n, r: progress(f"rho={rho:g} {method}", e, n, r))

        trained = train_methods(
            settings.mitigation,
            dataset,
            spec.model.text,
            _train_config(settings, spec),
            ctx.device,
            width=spec.width,
            mitigation=settings.mitigation_config(),
            progress=report,
            held_out=held_out,
        )
        return list(trained.values())

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
        method: str | None = None,
    ) -> None:
        """Add one rho's (and method's) measurement to the result: its rows, its section row, pictures and files.
        A method labels every row (method=<name>) and its section row."""
        metrics = measure_reliance(model, dataset, attribution=settings.attribution)
        rho, tag = (
            dataset.manifest["rho"],
            dataset.tag,
        )  # the dataset's; with a given model it shaped the test split only
        labels = {"tag": tag, "rho": rho, **({} if method is None else {"method": method})}
        result.rows += [metric_row("shortcut", name, getattr(metrics, name), **labels) for name in SCALARS]
        result.rows += [
            metric_row("shortcut", "group_accuracy", g["accuracy"], group=g["group"], **labels) for g in metrics.groups
        ]
        model_dir = None if not files or ctx.out_dir is None else str(ctx.out_dir / next(iter(files)))
        result.section["rows"].append(
            {
                "rho": rho,
                **({} if method is None else {"method": method}),
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
        where = f"rho={rho:g}" + ("" if method is None else f"/{method}")
        result.pictures.update({f"{where}/{k}": v for k, v in pictures.items()})
        result.files.update(files)


def _column(row: dict[str, Any], sweep: bool) -> str:
    """A run's column: its rho (a given model's marked), or its method, with its rho in a sweep."""
    if "method" not in row:
        return f"rho {fmt(row['rho'], 2)}" + (" (given model)" if row.get("training") is None else "")
    return f"rho {fmt(row['rho'], 2)} {row['method']}" if sweep else row["method"]
