"""The shortcut audit: build the controlled dataset for each rho, train (or take) a model, measure reliance."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch


from ..data.controlled import BuildConfig, build_controlled, load_controlled
from ..data.shortcuts import make_shortcut
from ..data.sources import load_source
from ..errors import AuditError
from ..models import save_model_dir
from ..models.user import UserModelSpec, load_user_model, split_model_spec
from ..models.load import first_layer_pictures
from ..report.schema import Report, metric_row
from ..runtime import resolve_device, share_weights_from_first
from ..subject import EvalData, check_model_fits, check_model_spec, probe_model
from ..train import TrainConfig, train_on_controlled
from .annotated import recoloured_error
from .metrics import ATTRIBUTIONS, ShortcutMetrics, measure_reliance, shortcut_examples


@dataclass
class ShortcutAuditConfig:
    build: BuildConfig = field(default_factory=BuildConfig)
    rhos: list[float] = field(default_factory=lambda: [0.95])
    model: str = "cnn"  # an architecture to train (mlp, cnn, resnet18) or a trained model's spec (auditnn:DIR, ...)
    weights: str | None = None  # with a factory: or torchvision: model
    mean: list[float] | None = None
    std: list[float] | None = None
    width: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"
    data_dir: str | None = None  # a dataset written by 'auditnn data build' instead of building one
    attribution: str = "gradxinput"
    save_models_to: str | None = None  # folder for each trained model (model.pt + model.json), one per rho

    def validate(self) -> None:
        if not self.rhos:
            raise AuditError("rho list is empty; allowed: one or more values in [0, 1]")
        for rho in self.rhos:
            replace(self.build, rho=rho).validate()
        if self.attribution not in ATTRIBUTIONS:
            raise AuditError(f"attribution '{self.attribution}' is unknown; allowed: {', '.join(ATTRIBUTIONS)}")
        if self.data_dir is not None and len(self.rhos) > 1:
            raise AuditError("a rho sweep builds its own datasets; drop --data or give a single --rho")
        check_model_spec(self.model)
        self.train.validate()
        if is_trained_model_spec(self.model) and len(self.rhos) > 1:
            raise AuditError("a rho sweep trains one model per rho; drop --model or give a single --rho")


@dataclass
class RhoResult:
    rho: float
    metrics: ShortcutMetrics
    dataset: dict[str, Any]
    training: dict[str, Any] | None
    model_dir: str | None
    seconds: float


@dataclass
class ShortcutAuditResult:
    rows: list[RhoResult]
    device: str
    seconds: float
    pictures: dict[str, torch.Tensor] = field(default_factory=dict)  # examples per rho, for the HTML report

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "seconds": self.seconds, "rows": [asdict(r) for r in self.rows]}


def is_trained_model_spec(spec: str) -> bool:
    return split_model_spec(spec)[0] != "arch"


def load_given_model(config: ShortcutAuditConfig, dataset: Any, device: torch.device) -> torch.nn.Module:
    """A trained model to measure on the controlled dataset; it must take the dataset's images as they are."""
    spec = UserModelSpec(config.model, config.weights, config.mean, config.std)
    channels = dataset.test.images.shape[1]
    model, card = load_user_model(spec, num_classes=dataset.num_classes, channels=channels)
    # A tag that paints gray images RGB (background) is the likely reason a gray model does not fit: say so.
    recoloured = make_shortcut(dataset.tag, dataset.num_classes).output_channels(1) != 1
    declared = card.get("input_shape")
    if declared:
        if recoloured and declared[0] is not None and declared[0] != channels:
            plural = "s" if declared[0] > 1 else ""
            raise recoloured_error(dataset.tag, channels, f"model '{config.model}' takes {declared[0]} channel{plural}")
        check_model_fits({**card, "classes": card["classes"] or dataset.classes}, dataset.test.images,
                         dataset.num_classes, f"'{config.model}'")
    model = model.to(device).eval()
    data = EvalData(dataset.train.images, dataset.train.labels, dataset.test.images, dataset.test.labels,
                    dataset.classes, {})
    try:
        probe_model(model, data, f"'{config.model}'")
    except AuditError as exc:
        if not recoloured:
            raise
        raise recoloured_error(dataset.tag, channels, f"model '{config.model}' fails on them ({exc})") from None
    return model


def run_shortcut_audit(
    config: ShortcutAuditConfig,
    *,
    progress: Callable[[float, int, int, dict[str, float]], None] | None = None,
) -> ShortcutAuditResult:
    """One row per rho: build (or load) the controlled dataset, train (or load) the model, measure reliance.
    `progress(rho, epoch, epochs, row)` is called after every training epoch."""
    config.validate()
    device = resolve_device(config.device)
    start = time.perf_counter()
    given_model = None
    base = None
    if config.data_dir is None:
        b = config.build
        base = load_source(b.base, data_root=b.data_root, download=b.download, seed=b.seed, size=b.size)
    rows = []
    pictures: dict[str, torch.Tensor] = {}
    for rho in config.rhos:
        row_start = time.perf_counter()
        if config.data_dir is not None:
            dataset = load_controlled(config.data_dir)
        else:
            dataset = build_controlled(replace(config.build, rho=rho), base)
        training = model_dir = None
        if is_trained_model_spec(config.model):
            if given_model is None:
                given_model = load_given_model(config, dataset, device)
            model = given_model
        else:
            report = None if progress is None else (lambda e, n, r, rho=rho: progress(rho, e, n, r))
            model, fit_result, card = train_on_controlled(
                dataset, config.model, config.train, device, width=config.width, progress=report
            )
            share_weights_from_first(model)
            training = asdict(fit_result)
            if config.save_models_to is not None:
                model_dir = str(save_model_dir(model, card, Path(config.save_models_to) / f"rho-{dataset.manifest['rho']:g}"))
        metrics = measure_reliance(model, dataset, attribution=config.attribution)
        key = f"shortcut/{dataset.tag}/rho={dataset.manifest['rho']:g}"
        pictures.update({f"{key}/{k}": v for k, v in shortcut_examples(model, dataset).items()})
        pictures.update({f"{key}/{k}": v for k, v in first_layer_pictures(model, dataset.test.images.shape[1:]).items()})
        rows.append(
            RhoResult(
                rho=dataset.manifest["rho"],  # the dataset's; with a given model it shaped the test split only
                metrics=metrics,
                dataset={k: dataset.manifest.get(k) for k in ("base", "shortcut", "rho", "aligned_share", "seed", "sizes",
                                                               "classes")},
                training=training,
                model_dir=model_dir,
                seconds=time.perf_counter() - row_start,
            )
        )
    return ShortcutAuditResult(rows, str(device), time.perf_counter() - start, pictures)


def shortcut_report(
    result: ShortcutAuditResult, config: ShortcutAuditConfig, *, run_id: str, environment: dict[str, Any]
) -> Report:
    """The audit's Report: every metric as a tidy row (per rho, per group), the full configuration, timings."""
    rows = []
    scalar = (
        "clean_accuracy", "aligned_accuracy", "conflicting_accuracy", "gap", "worst_group_accuracy", "reliance",
        "follow_rate", "follow_rate_normalized", "swap_flip_rate", "remove_flip_rate", "attribution_mass",
        "attribution_chance", "attribution_ratio", "mask_share",
    )
    for r in result.rows:
        tag = r.dataset["shortcut"]["tag"]
        for name in scalar:
            rows.append(metric_row("shortcut", name, getattr(r.metrics, name), tag=tag, rho=r.rho))
        for g in r.metrics.groups:
            rows.append(metric_row("shortcut", "group_accuracy", g["accuracy"], group=g["group"], tag=tag, rho=r.rho))
    timings = {"total": result.seconds}
    timings.update({f"rho={r.rho:g}": r.seconds for r in result.rows})
    return Report(
        command="shortcut",
        run_id=run_id,
        config=asdict(config),
        environment=environment,
        seed=config.build.seed,
        results={"shortcut": result.to_dict()},
        metrics=rows,
        timings=timings,
    )
