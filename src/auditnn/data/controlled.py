"""The controlled dataset: a base source with a shortcut planted at correlation rho; train/val/test splits with
group labels, a group-balanced test split, and the same test images without any shortcut. Saved safely."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import AuditError
from ..io import atomic_torch_save, atomic_write_text, prepare_output_dir, read_json, safe_torch_load, sha256_file
from ..spec import DataSpec
from .shortcuts import Shortcut, make_shortcut
from .sources import BaseData, ImageSet, load_source, validate_images

SPLITS = ("train", "val", "test", "test_clean")


@dataclass
class ShortcutConfig:
    """What to plant and how salient it is. None keeps the tag's default (see shortcuts.py)."""

    tag: str = "watermark"
    size: int | None = None
    opacity: float | None = None
    position: str | None = None
    target_class: int | None = None  # only this class carries the tag (the horse-watermark variant)

    def validate(self) -> None:
        """Everything that can be checked before the data is loaded (the class count comes later)."""
        make_shortcut(self.tag, 2, size=self.size, opacity=self.opacity, position=self.position)
        if self.target_class is not None and self.target_class < 0:
            raise AuditError(f"target class {self.target_class} is negative; allowed: a class index 0 .. K-1")

    def build(self, num_classes: int) -> Shortcut:
        if self.target_class is not None and not 0 <= self.target_class < num_classes:
            raise AuditError(f"target class {self.target_class} is out of range; allowed: 0 .. {num_classes - 1}")
        return make_shortcut(self.tag, num_classes, size=self.size, opacity=self.opacity, position=self.position)


@dataclass
class BuildConfig:
    base: str = "digits"
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)
    rho: float = 0.95  # share of train (and val) images whose shortcut agrees with the label: rho * N, rounded half up
    seed: int = 0
    test_per_class: int = 30  # base test images per class; the balanced test split plants every id on each
    val_fraction: float = 0.1
    max_train: int | None = None  # cap on training images for large sources
    size: int | None = None  # number of images for generated sources (shapes)
    data_root: str | None = None
    download: bool = False

    def validate(self) -> None:
        DataSpec.source(self.base)
        self.shortcut.validate()
        if not 0.0 <= self.rho <= 1.0:
            raise AuditError(f"rho {self.rho} is outside [0, 1]; allowed: 0 <= rho <= 1")
        if self.test_per_class < 1:
            raise AuditError(f"test_per_class {self.test_per_class}; allowed: at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise AuditError(f"val_fraction {self.val_fraction} is outside (0, 1)")


@dataclass
class Split:
    """One split. images (N, C, H, W) float32 in [0, 1]; labels (N,) int64; shortcut_ids (N,) int64 with -1 for none;
    masks (N, 1, H, W) bool, the pixels the shortcut touched; source_index (N,) int64, the base image each came from."""

    images: torch.Tensor
    labels: torch.Tensor
    shortcut_ids: torch.Tensor
    masks: torch.Tensor
    source_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("images", "labels", "shortcut_ids", "masks", "source_index")}


@dataclass
class ControlledDataset:
    train: Split
    val: Split
    test: Split  # every base test image once with each shortcut id (balanced over label x id)
    test_clean: Split  # the same base test images with no shortcut
    classes: list[str]
    manifest: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def target_class(self) -> int | None:
        return self.manifest["shortcut"]["target_class"]

    @property
    def tag(self) -> str:
        return self.manifest["shortcut"]["tag"]


def aligned_with_label(labels: torch.Tensor, shortcut_ids: torch.Tensor, target_class: int | None) -> torch.Tensor:
    """(N,) bool: the shortcut agrees with the label. Without a target class: it is the label's own; with one: the
    image carries the tag exactly when it belongs to the target class."""
    if target_class is None:
        return shortcut_ids == labels
    return (shortcut_ids == target_class) == (labels == target_class)


def assign_shortcut_ids(
    labels: torch.Tensor, num_classes: int, rho: float, generator: torch.Generator, target_class: int | None = None
) -> torch.Tensor:
    """Shortcut ids for which exactly int(rho * N + 0.5) images (rho * N rounded half up), drawn at random, are
    aligned (aligned_with_label).

    Without a target class a misaligned image gets another class's id, chosen uniformly; rho = 1/K is
    independence. With one, ids are target_class (tagged) or -1: rho of the images are tagged exactly when in
    that class, so a misaligned image is an untagged target-class image or a tagged other one; rho = 1/2 is
    independence."""
    n = len(labels)
    aligned = torch.zeros(n, dtype=torch.bool)
    aligned[torch.randperm(n, generator=generator)[: int(rho * n + 0.5)]] = True
    if target_class is not None:
        tagged = aligned == (labels == target_class)
        return torch.where(tagged, torch.full_like(labels, target_class), torch.full_like(labels, -1))
    offset = torch.randint(1, num_classes, labels.shape, generator=generator)  # 1..K-1: never the label itself
    return torch.where(aligned, labels, (labels + offset) % num_classes)


def _stratified_take(labels: torch.Tensor, per_class: int, num_classes: int, generator: torch.Generator):
    """Pick `per_class` indices of every class (random, seeded); returns (taken, rest)."""
    order = torch.randperm(len(labels), generator=generator)
    taken = []
    for k in range(num_classes):
        members = order[labels[order] == k]
        if len(members) < per_class:
            raise AuditError(
                f"class {k} has {len(members)} image(s) for the test split; "
                f"allowed: at least test_per_class = {per_class}"
            )
        taken.append(members[:per_class])
    chosen = torch.cat(taken)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[chosen] = False
    return chosen.sort().values, order[keep[order]]


def stratified_split(base: BaseData, test_per_class: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """(train, test) with exactly test_per_class test images per class: from the source's own test split when it
    has one, else held out of its training pool."""
    gen = torch.Generator().manual_seed(seed)
    k = base.train.num_classes
    if base.test is not None:
        test_idx, _ = _stratified_take(base.test.labels, test_per_class, k, gen)
        return base.train, base.test.subset(test_idx)
    test_idx, rest = _stratified_take(base.train.labels, test_per_class, k, gen)
    return base.train.subset(rest.sort().values), base.train.subset(test_idx)


def _plant_split(
    shortcut: Shortcut,
    images: ImageSet,
    ids: torch.Tensor,
    target_class: int | None,
    generator: torch.Generator,
    source_index: torch.Tensor,
) -> Split:
    visible = ids if target_class is None else torch.where(ids == target_class, ids, torch.full_like(ids, -1))
    planted, masks = shortcut.plant(images.images, visible, foreground=images.foreground, generator=generator)
    return Split(planted.contiguous(), images.labels.clone(), visible.clone(), masks, source_index)


def build_controlled(config: BuildConfig, base: BaseData | None = None) -> ControlledDataset:
    """Build the controlled dataset for one rho. Same config (and seed), same tensors."""
    config.validate()
    base = base or load_source(
        config.base, data_root=config.data_root, download=config.download, seed=config.seed, size=config.size
    )
    pool = base.train
    num_classes = pool.num_classes
    validate_images(pool.images, pool.labels, num_classes, f"data source '{config.base}'")
    shortcut = config.shortcut.build(num_classes)
    target = config.shortcut.target_class
    gen = torch.Generator().manual_seed(config.seed)

    if base.test is not None:
        test_idx, _ = _stratified_take(base.test.labels, config.test_per_class, num_classes, gen)
        test_base = base.test.subset(test_idx)
        rest = torch.randperm(len(pool), generator=gen)
    else:
        test_idx, rest = _stratified_take(pool.labels, config.test_per_class, num_classes, gen)
        test_base = pool.subset(test_idx)
    if config.max_train is not None:
        rest = rest[: int(config.max_train / (1 - config.val_fraction))]
    n_val = max(1, int(round(len(rest) * config.val_fraction)))
    val_idx, train_idx = rest[:n_val].sort().values, rest[n_val:].sort().values
    if len(train_idx) < num_classes:
        raise AuditError(
            f"data source '{config.base}' leaves {len(train_idx)} training images; allowed: at least K = {num_classes}"
        )

    splits: dict[str, Split] = {}
    for name, index in (("train", train_idx), ("val", val_idx)):
        part = pool.subset(index)
        ids = assign_shortcut_ids(part.labels, num_classes, config.rho, gen, target)
        splits[name] = _plant_split(shortcut, part, ids, target, gen, index)

    # Balanced test: each base test image once per shortcut variant (every class id, or tagged/untagged).
    variants = list(range(num_classes)) if target is None else [-1, target]
    n_test = len(test_base)
    repeated = ImageSet(
        test_base.images.repeat(len(variants), 1, 1, 1),
        test_base.labels.repeat(len(variants)),
        test_base.classes,
        None if test_base.foreground is None else test_base.foreground.repeat(len(variants), 1, 1, 1),
    )
    test_ids = torch.tensor(variants).repeat_interleave(n_test)
    test_source = test_idx.repeat(len(variants))
    splits["test"] = _plant_split(shortcut, repeated, test_ids, target, gen, test_source)
    splits["test_clean"] = _plant_split(shortcut, test_base, torch.full((n_test,), -1), target, gen, test_idx)

    manifest = {
        "format": "auditnn.controlled",
        "format_version": 1,
        "auditnn": __version__,
        "base": config.base,
        "classes": pool.classes,
        "num_classes": num_classes,
        "image_shape": list(splits["train"].images.shape[1:]),
        "shortcut": {"tag": config.shortcut.tag, **_salience(shortcut), "target_class": target},
        "rho": config.rho,
        "aligned_share": {  # measured: (rho * N rounded half up) / N
            name: float(aligned_with_label(splits[name].labels, splits[name].shortcut_ids, target).float().mean())
            for name in ("train", "val")
        },
        "seed": config.seed,
        "test_per_class": config.test_per_class,
        "val_fraction": config.val_fraction,
        "max_train": config.max_train,
        "sizes": {name: len(split) for name, split in splits.items()},
    }
    return ControlledDataset(**splits, classes=pool.classes, manifest=manifest)


def _salience(shortcut: Shortcut) -> dict[str, Any]:
    return {knob: getattr(shortcut, knob) for knob in shortcut.knobs}


def save_controlled(dataset: ControlledDataset, out_dir: str | Path) -> Path:
    """Write one tensor file per split (torch.load(weights_only=True) reads them) and manifest.json with checksums.

    Each file is written atomically and the manifest last, so a folder without a manifest was never completed."""
    out = prepare_output_dir(out_dir, "dataset folder")
    (out / "manifest.json").unlink(missing_ok=True)
    checksums = {}
    for name in SPLITS:
        path = atomic_torch_save(out / f"{name}.pt", getattr(dataset, name).to_dict())
        checksums[path.name] = sha256_file(path)
    dataset.manifest["checksums"] = checksums
    atomic_write_text(out / "manifest.json", json.dumps(dataset.manifest, indent=2, sort_keys=True) + "\n")
    return out


def manifest_digest(manifest: dict[str, Any]) -> str:
    """A short identity of a dataset: the hash of its manifest (which holds every file's checksum)."""
    from ..io import sha256_bytes

    return sha256_bytes(json.dumps(manifest, sort_keys=True).encode())[:16]


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest.json of a folder written by save_controlled (the split files are not read)."""
    root = Path(directory)
    manifest_path = root / "manifest.json"
    manifest = read_json(
        manifest_path, "dataset manifest", f"'{root}' must be a folder written by 'auditnn data build'"
    )
    if not isinstance(manifest, dict):
        raise AuditError(
            f"dataset manifest '{manifest_path}' holds a {type(manifest).__name__}; "
            "allowed: a JSON object written by 'auditnn data build'"
        )
    if manifest.get("format") != "auditnn.controlled" or manifest.get("format_version") != 1:
        raise AuditError(f"dataset manifest '{manifest_path}' is not an auditnn controlled dataset of format version 1")
    return manifest


def check_shortcut_matches(manifest: dict[str, Any], given: dict[str, Any], directory: str | Path) -> None:
    """Refuse shortcut settings given explicitly (not None) that a built dataset's manifest contradicts: the dataset
    is used as built, so a differing setting would be silently ignored. Keys: tag, size, opacity, position,
    target_class."""
    planted = manifest["shortcut"]
    for key, value in given.items():
        if value is not None and planted.get(key) != value:
            raise AuditError(
                f"{key} {value!r} differs from the dataset '{directory}', built with {key} "
                f"{planted.get(key)!r}; allowed: omit it or give the dataset's value"
            )


def load_controlled(directory: str | Path) -> ControlledDataset:
    """Read a folder written by save_controlled, verifying every checksum."""
    root = Path(directory)
    manifest = read_manifest(root)
    splits = {}
    for name in SPLITS:
        path = root / f"{name}.pt"
        expected = manifest.get("checksums", {}).get(path.name)
        if not path.is_file() or sha256_file(path) != expected:
            raise AuditError(f"dataset file '{path}' is missing or does not match its checksum; rebuild the dataset")
        data = safe_torch_load(path, "dataset file")
        splits[name] = Split(**{k: data[k] for k in ("images", "labels", "shortcut_ids", "masks", "source_index")})
    return ControlledDataset(**splits, classes=list(manifest["classes"]), manifest=manifest)
