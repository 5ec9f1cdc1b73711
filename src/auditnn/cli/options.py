"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..data.controlled import BuildConfig, ShortcutConfig
from ..spec import DataSpec, ModelSpec
from ..subject import SubjectSpec
from ..train import TrainConfig
from ..values import MAX_SEED, parse_number_list, require_finite

Base = Annotated[
    str, typer.Option(help="Base images: digits, shapes, torchvision:NAME (with --data-root), imagefolder:DIR.")
]
Tag = Annotated[str, typer.Option(help="Shortcut to plant: watermark, background or boat.")]
Size = Annotated[int | None, typer.Option(help="Stamp/pictogram side in pixels (watermark 7, boat 10).")]
Opacity = Annotated[
    float | None, typer.Option(help="Blend weight of the shortcut in [0, 1] (watermark 0.7, others 1).")
]
Position = Annotated[str | None, typer.Option(help="top-left, top-right, bottom-left, bottom-right or random.")]
TargetClass = Annotated[int | None, typer.Option(help="Single-class variant: only this class carries the tag.")]
Seed = Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed for data, splits, initialisation and batches.")]
TestPerClass = Annotated[int, typer.Option(help="Base test images per class (each gets every shortcut variant).")]
DataRoot = Annotated[Path | None, typer.Option(help="Folder of a torchvision dataset's files.")]
Download = Annotated[bool, typer.Option(help="Download a torchvision dataset into --data-root first.")]
Out = Annotated[Path | None, typer.Option(help="Output folder (default: reports/<run-id>/).")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
BatchSize = Annotated[int, typer.Option(help="Training batch size.")]
LearningRate = Annotated[
    float, typer.Option("--lr", help="Adam learning rate.", callback=lambda v: require_finite(v, "--lr"))
]
Width = Annotated[int | None, typer.Option(help="Hidden units (mlp) or first-layer channels (cnn).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes; tables only.")]
Weights = Annotated[
    Path | None, typer.Option(help="State dict for the model (.pt read weights-only, or .safetensors).")
]
Mean = Annotated[
    str | None, typer.Option(help="Per-channel mean the model expects, in pixel units: 0.485,0.456,0.406.")
]
Std = Annotated[str | None, typer.Option(help="Per-channel std the model expects, in pixel units.")]
Strict = Annotated[bool, typer.Option(help="Non-image files in an image folder are an error, not skipped.")]
TrainedOrCached = Annotated[
    str,
    typer.Option(
        help="Architecture to train (cached), or a model: factory:pkg.mod:fn, torchvision:NAME, export:FILE.pt2, torchscript:FILE, auditnn:DIR."
    ),
]
EvalBatchSize = Annotated[
    int | None, typer.Option(help="Images per batch (default: the most that fit --max-memory, at most 512).")
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        help="Memory a batch may take, e.g. 4GB or 512MB (default: half the free memory on CPU, 0.8 on CUDA)."
    ),
]


def user_model(model: str, weights: Path | None, mean: str | None, std: str | None) -> ModelSpec:
    return ModelSpec(
        model,
        None if weights is None else str(weights),
        None if mean is None else parse_number_list(mean, "--mean", unique=False),
        None if std is None else parse_number_list(std, "--std", unique=False),
    )


def subject_spec(
    *,
    model: ModelSpec,
    base: str = "digits",
    data: str | None = None,
    data_root: Path | None = None,
    download: bool = False,
    test_per_class: int = 30,
    strict: bool = False,
    width: int | None = None,
    train: TrainConfig | None = None,
) -> SubjectSpec:
    """The options every measuring command shares, as the plan's subject."""
    return SubjectSpec(
        model=model,
        base=DataSpec.source(base),
        data=None if data is None else DataSpec.parse(data),
        data_root=None if data_root is None else str(data_root),
        download=download,
        test_per_class=test_per_class,
        strict=strict,
        width=width,
        train=train or TrainConfig(),
    )


def build_config(
    *,
    base: str,
    tag: str,
    rho: float,
    size: int | None,
    opacity: float | None,
    position: str | None,
    target_class: int | None,
    seed: int,
    test_per_class: int,
    data_root: Path | None,
    download: bool,
) -> BuildConfig:
    return BuildConfig(
        base=base,
        shortcut=ShortcutConfig(tag=tag, size=size, opacity=opacity, position=position, target_class=target_class),
        rho=rho,
        seed=seed,
        test_per_class=test_per_class,
        data_root=None if data_root is None else str(data_root),
        download=download,
    )


def train_config(*, epochs: int, batch_size: int, lr: float, seed: int) -> TrainConfig:
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    config.validate()
    return config


def evaluated_subject(
    *,
    model: str,
    weights: Path | None,
    mean: str | None,
    std: str | None,
    base: str,
    data: str | None,
    data_root: Path | None,
    download: bool,
    test_per_class: int,
    strict: bool,
    width: int | None,
    epochs: int,
    seed: int,
) -> SubjectSpec:
    """The subject of a command that evaluates a model (attack, corrupt, discover): the user's model, or an
    architecture trained (and cached) with the default batch size and learning rate, on --data or the built-in base."""
    return subject_spec(
        model=user_model(model, weights, mean, std),
        base=base,
        data=data,
        data_root=data_root,
        download=download,
        test_per_class=test_per_class,
        strict=strict,
        width=width,
        train=train_config(epochs=epochs, batch_size=64, lr=2e-3, seed=seed),
    )
