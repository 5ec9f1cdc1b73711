"""What an audit looks at: evaluation data (with training images for what must be fitted) and the model, trained,
reused from the cache, or loaded from a folder auditnn wrote."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .data.controlled import load_controlled, manifest_digest, stratified_split
from .data.sources import load_source, validate_images
from .errors import AuditError, allowed
from .models import MODELS, PixelModel, load_model_dir, save_model_dir
from .models.load import CARD
from .train import ProgressFn, TrainConfig, train_classifier


@dataclass
class EvalData:
    """train_*: images a model or a patch is fitted on; test_*: held-out images the audit measures.
    Images (N, C, H, W) float32 in [0, 1]; labels (N,) int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    description: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_eval_data(
    *, base: str = "digits", data_dir: str | None = None, data_root: str | None = None, download: bool = False,
    test_per_class: int = 30, seed: int = 0,
) -> EvalData:
    """A controlled dataset folder (its train split, and its test images without any shortcut), or a base source
    split into train and a class-stratified test set."""
    if data_dir is not None:
        ds = load_controlled(data_dir)
        return EvalData(ds.train.images, ds.train.labels, ds.test_clean.images, ds.test_clean.labels, ds.classes,
                        {"data": data_dir, "manifest_hash": manifest_digest(ds.manifest), "test": "test_clean"})
    source = load_source(base, data_root=data_root, download=download, seed=seed)
    validate_images(source.train.images, source.train.labels, source.train.num_classes, f"data source '{base}'")
    train, test = stratified_split(source, test_per_class, seed)
    return EvalData(train.images, train.labels, test.images, test.labels, train.classes,
                    {"base": base, "seed": seed, "test_per_class": test_per_class})


def cache_dir() -> Path:
    """$AUDITNN_CACHE_DIR, else $XDG_CACHE_HOME/auditnn, else ~/.cache/auditnn."""
    if os.environ.get("AUDITNN_CACHE_DIR"):
        return Path(os.environ["AUDITNN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "auditnn"


def check_model_fits(card: dict[str, Any], images: torch.Tensor, num_classes: int, where: str) -> None:
    """A trained model's card against the data: same input shape (C, H, W), same number of classes."""
    shape = list(images.shape[1:])
    if list(card["input_shape"]) != shape:
        raise AuditError(f"model {where} expects input {card['input_shape']} but the data has {shape}; use matching data")
    if len(card["classes"]) != num_classes:
        raise AuditError(f"model {where} has {len(card['classes'])} classes but the data has {num_classes}; use matching data")


def check_model_spec(spec: str) -> None:
    if not spec.startswith("auditnn:") and spec not in MODELS:
        raise AuditError(f"model '{spec}' is unknown; allowed: {allowed(MODELS)} or auditnn:DIR")


def resolve_model(
    spec: str, data: EvalData, train: TrainConfig, device: torch.device, *, width: int | None = None,
    progress: ProgressFn | None = None,
) -> tuple[PixelModel, dict[str, Any], str]:
    """Returns (model on device in eval mode, model card, where it came from: 'loaded', 'cache' or 'trained').

    An architecture name trains on data.train_*; the result is cached under cache_dir(), keyed by everything that
    determines it, so a second run with the same settings reuses it."""
    check_model_spec(spec)
    if spec.startswith("auditnn:"):
        model, card = load_model_dir(spec.removeprefix("auditnn:"))
        check_model_fits(card, data.test_images, data.num_classes, f"'{spec}'")
        return model.to(device).eval(), card, "loaded"
    key_source = json.dumps(
        {"arch": spec, "width": width, "train": asdict(train), "data": data.description, "auditnn": __version__,
         "torch": torch.__version__, "device": device.type}, sort_keys=True)
    folder = cache_dir() / "models" / hashlib.sha256(key_source.encode()).hexdigest()[:16]
    if (folder / CARD).is_file():
        try:
            model, card = load_model_dir(folder)
            return model.to(device).eval(), card, "cache"
        except AuditError:
            pass  # a damaged cache entry is retrained and overwritten
    model, _, card = train_classifier(
        data.train_images, data.train_labels, data.classes, spec, train, device, width=width,
        dataset_info=data.description, progress=progress,
    )
    try:
        save_model_dir(model, card, folder)
    except OSError:
        pass  # an unwritable cache costs a retrain next time, never the run
    return model.eval(), card, "trained"
