"""The subject of an audit: evaluation data (with training images for what must be fitted) and the model, trained,
reused from the cache, or loaded from the user's spec; with a fingerprint of both that keys cached results."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .data.controlled import load_controlled, manifest_digest, stratified_split
from .data.sources import load_source, validate_images
from .data.stream import PixelStore, as_store
from .errors import AuditError, InvariantError
from .inference import check_logits, eval_mode, model_device
from .models import PixelModel, load_model_dir, save_model_dir
from .models.load import CARD
from .models.user import load_user_model
from .runtime import is_main_process, object_from_first, share_weights_from_first
from .spec import DataSpec, ModelSpec
from .train import ProgressFn, TrainConfig, new_classifier, train_classifier

DIGEST_BATCH = 1024  # images per read when hashing a store


@dataclass
class EvalData:
    """train: images a model or a patch is fitted on; test: held-out images the audit measures. Each a store
    (data.stream: in memory, or files decoded per batch) reading float32 (N, C, H, W) in [0, 1]; labels (N,) int64.
    A tensor given for a store is held in memory as it is."""

    train: PixelStore
    train_labels: torch.Tensor
    test: PixelStore
    test_labels: torch.Tensor
    classes: list[str]
    description: dict[str, Any]
    test_names: list[str] | None = None  # file names (or indices) of the test images, for --groups
    fitted_on_test: bool = False  # no separate training images: the test images are all there is

    def __post_init__(self) -> None:
        self.train = as_store(self.train)
        self.test = as_store(self.test)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_images(self) -> torch.Tensor:
        """Every training image as one float32 tensor (made once): for what must see them all at once."""
        return self.train.materialize()

    @property
    def test_images(self) -> torch.Tensor:
        """Every test image as one float32 tensor (made once): for what must see them all at once; a pass over
        the images reads `test.batches` instead."""
        return self.test.materialize()


def load_eval_data(
    *,
    base: str | DataSpec = "digits",
    data: str | DataSpec | None = None,
    data_root: str | None = None,
    download: bool = False,
    test_per_class: int = 30,
    seed: int = 0,
    strict: bool = False,
    trains_model: bool = False,
) -> EvalData:
    """What an audit measures:
    - data = a controlled dataset folder: its train split, and its test images without any shortcut;
    - data = a source spec (the user's images) and a trained model: every image, or the source's official test
      split when it has one;
    - otherwise (the base source, or the user's images when `trains_model`: an architecture will be fitted on
      train_*): test_per_class images of every class held out (from the official test split when there is one),
      the rest to train on, so a model is never scored on the images it was fitted on."""
    given = DataSpec.parse(data) if isinstance(data, str) else data
    if given is not None and not given.is_source:
        ds = load_controlled(given.arg)
        return EvalData(
            as_store(ds.train.images),
            ds.train.labels,
            as_store(ds.test_clean.images),
            ds.test_clean.labels,
            ds.classes,
            {"data": given.text, "manifest_hash": manifest_digest(ds.manifest), "test": "test_clean"},
        )
    if given is not None and not trains_model:
        source = load_source(given, data_root=data_root, download=download, seed=seed, strict=strict)
        test = source.train if source.test is None else source.test
        validate_images(test.store, test.labels, test.num_classes, f"data '{given.text}'")
        return EvalData(
            source.train.store,
            source.train.labels,
            test.store,
            test.labels,
            test.classes,
            {"data": given.text, **source.notes, "n_images": len(test)},
            test.names,
            source.test is None,
        )
    spec = given or (DataSpec.source(base) if isinstance(base, str) else base)
    source = load_source(spec, data_root=data_root, download=download, seed=seed, strict=strict)
    where = f"data source '{spec.text}'"
    validate_images(source.train.store, source.train.labels, source.train.num_classes, where)
    counts = torch.bincount(source.train.labels, minlength=source.train.num_classes)
    if source.test is None and int(counts.min()) <= test_per_class:
        k = int(counts.argmin())
        raise AuditError(
            f"{where}: class {k} has {int(counts[k])} image(s), so holding out test_per_class = "
            f"{test_per_class} leaves none to train on; allowed: test_per_class < {int(counts[k])}"
        )
    train, test = stratified_split(source, test_per_class, seed)
    return EvalData(
        train.store,
        train.labels,
        test.store,
        test.labels,
        train.classes,
        {
            "base": spec.text,
            "seed": seed,
            "test_per_class": test_per_class,
            **source.notes,
            "n_train": len(train),
            "n_test": len(test),
        },
        test.names,
    )


@dataclass(frozen=True)
class SubjectSpec:
    """How to obtain the subject, as an audit file's [model] and [data] tables or a command's options say it.
    base: the source an architecture trains on (test_per_class of each class held out); data: the user's images or
    a built dataset folder, measured instead; width and train: for an architecture."""

    model: ModelSpec = field(default_factory=lambda: ModelSpec("cnn"))
    base: DataSpec = field(default_factory=lambda: DataSpec.source("digits"))
    data: DataSpec | None = None
    data_root: str | None = None
    download: bool = False
    test_per_class: int = 30
    strict: bool = False
    width: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """What can be refused before any data is read."""
        if self.test_per_class < 1:
            raise AuditError(f"test_per_class {self.test_per_class}; allowed: at least 1")
        self.train.validate()


@dataclass
class Subject:
    """The model (on `device`, eval mode, taking [0, 1] pixels), its card, the data it is measured on, where the
    model came from ('trained', 'cache' or the user's spec) and a fingerprint: sha256 over the model's weights, its
    answers and input gradients on 16 test images, the test and training images and labels, and the settings that
    made them (images in memory by their pixels, files by path, size and modification time). It keys the per-check
    records and saved batches that --resume reuses (runner.check_key), and is computed on first use:
    a command that keeps no records never pays for it."""

    model: nn.Module
    card: dict[str, Any]
    data: EvalData
    device: torch.device
    source: str
    made_by: str  # what determined the model beyond its weights: the training cache key, or its kind and normalization

    @functools.cached_property
    def fingerprint(self) -> str:
        data = self.data
        train = data.description.get("train_sha256") or data_identity(data.train, data.train_labels)
        return _fingerprint(
            self.made_by,
            weights_digest(self.model),
            answers_digest(self.model, data),
            data_identity(data.test, data.test_labels),
            train,  # a patch is fitted on the training images
        )

    @property
    def described(self) -> dict[str, Any]:
        """The data as a report section records it."""
        return {**self.data.description, "classes": self.data.classes, "n_test": len(self.data.test_labels)}


def load_subject(spec: SubjectSpec, device: torch.device, seed: int, progress: ProgressFn | None = None) -> Subject:
    """The evaluation data, then the model: an architecture is trained (or read from the cache) on the training
    images, never scored on them."""
    data = load_eval_data(
        base=spec.base,
        data=spec.data,
        data_root=spec.data_root,
        download=spec.download,
        test_per_class=spec.test_per_class,
        seed=seed,
        strict=spec.strict,
        trains_model=spec.model.is_architecture,
    )
    return resolve_subject(spec.model, data, spec.train, device, width=spec.width, progress=progress)


def data_digest(images: torch.Tensor | PixelStore, labels: torch.Tensor) -> str:
    """sha256 of images and labels as measured or fitted: the shape, then the float32 pixel bytes and the int64 label bytes
    (images (N, C, H, W) in [0, 1], labels (N,)). A store is read batch by batch (the same digest as all at once).
    About 1 s per GB, far below the cost of training; an image folder's files are decoded once more."""
    store = as_store(images.detach().cpu() if isinstance(images, torch.Tensor) else images)
    digest = hashlib.sha256(str([len(store), *store.shape]).encode())
    for _, _, batch in store.batches(DIGEST_BATCH):
        digest.update(batch.float().contiguous().numpy().tobytes())
    digest.update(labels.detach().cpu().long().contiguous().numpy().tobytes())
    return digest.hexdigest()


def data_identity(images: PixelStore, labels: torch.Tensor) -> str:
    """sha256 of a store's identity (its pixel bytes in memory, its files' paths, sizes and modification times) and
    the labels: what keys the per-check records, without decoding a folder again."""
    digest = hashlib.sha256(images.identity().encode())
    digest.update(labels.detach().cpu().long().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_dir() -> Path:
    """$AUDITNN_CACHE_DIR, else $XDG_CACHE_HOME/auditnn, else ~/.cache/auditnn."""
    if os.environ.get("AUDITNN_CACHE_DIR"):
        return Path(os.environ["AUDITNN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "auditnn"


def check_model_fits(card: dict[str, Any], shape: list[int], num_classes: int, where: str) -> None:
    """A trained model's card against the data: same input shape (C, H, W), same number of classes."""
    if list(card["input_shape"]) != shape:
        raise AuditError(
            f"model {where} expects input {card['input_shape']} but the data has {shape}; use matching data"
        )
    if len(card["classes"]) != num_classes:
        raise AuditError(
            f"model {where} has {len(card['classes'])} classes but the data has {num_classes}; use matching data"
        )


def conform_data(data: EvalData, shape: list[int | None]) -> EvalData:
    """The data converted to a model's declared input (C, H, W): gray <-> RGB, resized."""
    if list(shape) == list(data.test.shape):
        return data
    converted = replace(data, train=data.train.conformed(shape), test=data.test.conformed(shape))
    converted.description = {
        **data.description,
        "converted_from": list(data.test.shape),
        "converted_to": list(converted.test.shape),
    }
    return converted


def probe_model(model: nn.Module, data: EvalData, where: str) -> None:
    """One forward on two images: a model that cannot take the data, or answers with another number of classes,
    fails here with both shapes named."""
    sample = data.test.read(torch.arange(min(2, len(data.test)))).to(model_device(model))
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(sample)
    except Exception as exc:  # user code raises anything; the message is what helps
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuditError(
            f"model {where} fails on the data's images of shape {list(sample.shape[1:])} ({first}); "
            "check the channels and size it expects"
        ) from None
    if not isinstance(logits, torch.Tensor):
        raise AuditError(f"model {where} returned {type(logits).__name__}; allowed: a tensor of logits (N, K)")
    check_logits(logits.float(), len(sample), f"model {where}")
    if logits.shape[1] != data.num_classes:
        raise AuditError(
            f"model {where} answers with {logits.shape[1]} classes but the data has {data.num_classes}; "
            "use data with the model's classes"
        )


def weights_digest(model: nn.Module) -> str:
    """sha256 over the model's state: every entry's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            digest.update(f"{name} {value.dtype} {list(value.shape)}".encode())
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def answers_digest(model: nn.Module, data: EvalData) -> str:
    """sha256 of the model's logits on the first 16 test images and of their input gradient (of the summed logits),
    each rounded to 1e-3: what the weights alone do not say (the code of a factory or an exported program, a forward
    that cuts its gradient). Rounded so that GPU nondeterminism rarely moves it."""
    sample = data.test.read(torch.arange(min(16, len(data.test)))).to(model_device(model)).requires_grad_(True)
    with torch.enable_grad(), eval_mode(model):
        logits = model(sample).float()
        try:
            (grad,) = torch.autograd.grad(logits.sum(), sample, allow_unused=True)
        except RuntimeError:  # a program without gradients: its answers say what there is to say
            grad = None
    digest = hashlib.sha256(torch.round(logits.detach().cpu() * 1000).to(torch.int64).numpy().tobytes())
    gradient = torch.zeros(0) if grad is None else torch.nan_to_num(grad.detach().cpu().float())
    digest.update(torch.round(gradient * 1000).to(torch.int64).numpy().tobytes())
    return digest.hexdigest()


def resolve_subject(
    spec: ModelSpec,
    data: EvalData,
    train: TrainConfig,
    device: torch.device,
    *,
    width: int | None = None,
    progress: ProgressFn | None = None,
    conform: bool = True,
    check_card: Callable[[dict[str, Any]], None] | None = None,
) -> Subject:
    """The model a spec names, on `device` in eval mode, with the data it is measured on: converted to the model's
    declared input shape when it has one (with `conform`; without, a model that does not take the images as they
    are is an error); `check_card(card)` may refuse a trained model by its card before it is tried on the data.

    An architecture name trains on data.train_* (never on data that holds no images apart from the test images);
    the result is cached under cache_dir(), keyed by everything that determines it (the training images and labels
    by their sha256, which the returned data's description records as train_sha256), so a second run with the same
    settings and data reuses it. Under torchrun only the first process trains or reads the cache; every other
    process receives its weights, so all of them hold the same model whether or not the cache can be written."""
    if not spec.is_architecture:
        model, card = load_user_model(spec, num_classes=data.num_classes, channels=data.test.shape[0])
        if check_card is not None:
            check_card(card)
        declared = card.get("input_shape")
        if declared and conform:
            data = conform_data(data, list(declared))
        if declared and (spec.kind == "auditnn" or not conform):
            check_model_fits(
                {**card, "classes": card["classes"] or data.classes},
                list(data.test.shape),
                data.num_classes,
                f"'{spec.text}'",
            )
        model = model.to(device).eval()
        probe_model(model, data, f"'{spec.text}'")
        # the model as it computes (its kind, normalization and weights), not where it was read from
        described = json.dumps({"kind": spec.kind, "normalization": card.get("normalization")}, sort_keys=True)
        return Subject(model, card, data, device, spec.text, described)
    if data.fitted_on_test:
        raise InvariantError(
            f"architecture '{spec.text}' would be scored on the images it is trained on; "
            "load the data with trains_model=True"
        )
    data = replace(data, description={**data.description, "train_sha256": data_digest(data.train, data.train_labels)})
    key_source = json.dumps(
        {
            "arch": spec.text,
            "width": width,
            "train": asdict(train),
            "data": data.description,
            "classes": data.classes,
            "auditnn": __version__,
            "torch": torch.__version__,
            "device": device.type,
        },
        sort_keys=True,
    )
    folder = cache_dir() / "models" / hashlib.sha256(key_source.encode()).hexdigest()[:16]
    made: tuple[dict[str, Any], str] | None = None  # (card, 'trained' or 'cache'): the first process's
    if is_main_process():
        model, card, source = _cached_or_trained(folder, spec.text, data, train, device, width, progress)
        made = (card, source)
    else:  # the first process trains (or reads the cache); this one only needs the shape to receive its weights
        model = new_classifier(data.train_images, data.classes, spec.text, width)
    model = model.to(device)
    share_weights_from_first(model)
    shared = object_from_first(made)
    if shared is None:
        raise InvariantError("the first process sent no model card")
    card, source = shared
    return Subject(model.eval(), card, data, device, source, key_source)


def _cached_or_trained(
    folder: Path,
    arch: str,
    data: EvalData,
    train: TrainConfig,
    device: torch.device,
    width: int | None,
    progress: ProgressFn | None,
) -> tuple[PixelModel, dict[str, Any], str]:
    """(model, card, 'cache' or 'trained'): the model cached in `folder`, else trained on data.train_* and cached."""
    if (folder / CARD).is_file():
        try:
            model, card = load_model_dir(folder)
            return model, card, "cache"
        except AuditError:
            pass  # a damaged cache entry is retrained and overwritten
    model, _, card = train_classifier(
        data.train_images,
        data.train_labels,
        data.classes,
        arch,
        train,
        device,
        width=width,
        dataset_info=data.description,
        progress=progress,
    )
    try:
        save_model_dir(model, card, folder)
    except (OSError, AuditError):
        pass  # an unwritable cache costs a retrain next time, never the run
    return model, card, "trained"
