"""What an audit looks at: evaluation data (with training images for what must be fitted) and the model, trained,
reused from the cache, or loaded from a folder auditnn wrote."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .data.controlled import load_controlled, manifest_digest, stratified_split
from .data.sources import conform_images, load_source, validate_images
from .errors import AuditError
from .inference import check_logits, eval_mode, model_device
from .models import PixelModel, load_model_dir, save_model_dir
from .models.load import CARD
from .models.user import UserModelSpec, load_user_model, split_model_spec
from .runtime import barrier, is_main_process
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
    test_names: list[str] | None = None  # file names (or indices) of the test images, for --groups
    fitted_on_test: bool = False  # no separate training images: the test images are all there is

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def is_source_spec(text: str) -> bool:
    return text.split(":", 1)[0] in ("digits", "shapes", "torchvision", "imagefolder", "tensors")


def load_eval_data(
    *, base: str = "digits", data: str | None = None, data_root: str | None = None, download: bool = False,
    test_per_class: int = 30, seed: int = 0, strict: bool = False,
) -> EvalData:
    """What an audit measures:
    - data = a controlled dataset folder: its train split, and its test images without any shortcut;
    - data = a source spec (the user's images): every image, or the source's official test split when it has one;
    - otherwise the base source, split into train and a class-stratified test set."""
    if data is not None and not is_source_spec(data):
        ds = load_controlled(data)
        return EvalData(ds.train.images, ds.train.labels, ds.test_clean.images, ds.test_clean.labels, ds.classes,
                        {"data": data, "manifest_hash": manifest_digest(ds.manifest), "test": "test_clean"})
    if data is not None:
        source = load_source(data, data_root=data_root, download=download, seed=seed, strict=strict)
        test = source.train if source.test is None else source.test
        validate_images(test.images, test.labels, test.num_classes, f"data '{data}'")
        return EvalData(source.train.images, source.train.labels, test.images, test.labels, test.classes,
                        {"data": data, **source.notes, "n_images": len(test)}, test.names, source.test is None)
    source = load_source(base, data_root=data_root, download=download, seed=seed, strict=strict)
    validate_images(source.train.images, source.train.labels, source.train.num_classes, f"data source '{base}'")
    train, test = stratified_split(source, test_per_class, seed)
    return EvalData(train.images, train.labels, test.images, test.labels, train.classes,
                    {"base": base, "seed": seed, "test_per_class": test_per_class}, test.names)


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
    split_model_spec(spec)


def conform_data(data: EvalData, shape: list[int | None]) -> EvalData:
    """The data converted to a model's declared input (C, H, W): gray <-> RGB, resized."""
    if list(shape) == list(data.test_images.shape[1:]):
        return data
    converted = replace(data, train_images=conform_images(data.train_images, shape),
                        test_images=conform_images(data.test_images, shape))
    converted.description = {**data.description, "converted_from": list(data.test_images.shape[1:]),
                             "converted_to": list(converted.test_images.shape[1:])}
    return converted


def probe_model(model: nn.Module, data: EvalData, where: str) -> None:
    """One forward on two images: a model that cannot take the data, or answers with another number of classes,
    fails here with both shapes named."""
    sample = data.test_images[:2].to(model_device(model))
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(sample)
    except Exception as exc:  # user code raises anything; the message is what helps
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuditError(f"model {where} fails on the data's images of shape {list(sample.shape[1:])} ({first}); "
                         "check the channels and size it expects") from None
    if not isinstance(logits, torch.Tensor):
        raise AuditError(f"model {where} returned {type(logits).__name__}; allowed: a tensor of logits (N, K)")
    check_logits(logits.float(), len(sample), f"model {where}")
    if logits.shape[1] != data.num_classes:
        raise AuditError(f"model {where} answers with {logits.shape[1]} classes but the data has {data.num_classes}; "
                         "use data with the model's classes")


def resolve_model(
    spec: str | UserModelSpec, data: EvalData, train: TrainConfig, device: torch.device, *, width: int | None = None,
    progress: ProgressFn | None = None,
) -> tuple[PixelModel, dict[str, Any], str, EvalData]:
    """Returns (model on device in eval mode, model card, where it came from: 'trained', 'cache' or the spec, and
    the data, converted to the model's declared input shape when it has one).

    An architecture name trains on data.train_*; the result is cached under cache_dir(), keyed by everything that
    determines it, so a second run with the same settings reuses it."""
    user = spec if isinstance(spec, UserModelSpec) else UserModelSpec(spec)
    kind, _ = split_model_spec(user.spec)
    if kind != "arch":
        model, card = load_user_model(user, num_classes=data.num_classes, channels=data.test_images.shape[1])
        if card.get("input_shape"):
            data = conform_data(data, list(card["input_shape"]))
        if kind == "auditnn":
            check_model_fits(card, data.test_images, data.num_classes, f"'{user.spec}'")
        model = model.to(device).eval()
        probe_model(model, data, f"'{user.spec}'")
        return model, card, user.spec, data
    key_source = json.dumps(
        {"arch": user.spec, "width": width, "train": asdict(train), "data": data.description, "auditnn": __version__,
         "torch": torch.__version__, "device": device.type}, sort_keys=True)
    folder = cache_dir() / "models" / hashlib.sha256(key_source.encode()).hexdigest()[:16]
    if not is_main_process():
        barrier()  # the first process trains and caches the model; the others then load it
    if (folder / CARD).is_file():
        try:
            model, card = load_model_dir(folder)
            if is_main_process():
                barrier()
            return model.to(device).eval(), card, "cache", data
        except AuditError:
            pass  # a damaged cache entry is retrained and overwritten
    model, _, card = train_classifier(
        data.train_images, data.train_labels, data.classes, user.spec, train, device, width=width,
        dataset_info=data.description, progress=progress,
    )
    try:
        save_model_dir(model, card, folder)
    except OSError:
        pass  # an unwritable cache costs a retrain next time, never the run
    if is_main_process():
        barrier()
    return model.eval(), card, "trained", data
