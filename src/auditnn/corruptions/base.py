"""The corruption contract and registry (Hendrycks & Dietterich, ICLR 2019, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations").

A corruption is a batched torch function `fn(images, severity, generator) -> images`: float32 (N, C, H, W) in [0, 1]
on any device, C = 1 or 3, any H and W; severity 1..5; every random draw taken from `generator` (a torch.Generator on
the images' device), so the same generator state gives the same pixels. It returns a new tensor of the same shape,
dtype and device, in [0, 1]; it never loops over images in Python.

Constants: the reference code has two sets per corruption, one tuned for CIFAR-size images and one for ImageNet-size
images. `scale_of` picks the set from the image size (at most 64 px on the longer side: "cifar"; else "imagenet");
each corruption module keeps its table as {"cifar": [5 values], "imagenet": [5 values]} and reads it with `constants`.

The 15 benchmark corruptions are averaged into mCE; the 4 held-out ones (the reference's validation set) never are."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..errors import AuditError, allowed

FAMILIES = ("noise", "blur", "weather", "digital")
BENCHMARK = (  # the 15 of ImageNet-C, in the paper's order
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)
CIFAR_MAX_SIDE = 64  # images with both sides at most this many pixels take the CIFAR-size constants

CorruptionFn = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """One registered corruption. family: noise, blur, weather or digital; held_out: one of the 4 never averaged into
    mCE; random: it draws from the generator (else the same images always give the same output)."""

    name: str
    family: str
    held_out: bool
    random: bool
    fn: CorruptionFn


CORRUPTIONS: dict[str, Corruption] = {}
F = TypeVar("F", bound=CorruptionFn)


def register(name: str, family: str, *, random: bool) -> Callable[[F], F]:
    """Function decorator: add the corruption to CORRUPTIONS under `name` (which must be one of BENCHMARK or HELD_OUT);
    a duplicate name is an error."""
    if name not in BENCHMARK and name not in HELD_OUT:
        raise ValueError(f"corruption '{name}' is neither a benchmark nor a held-out corruption")
    if family not in FAMILIES:
        raise ValueError(f"family '{family}' is unknown")

    def add(fn: F) -> F:
        if name in CORRUPTIONS:
            raise ValueError(f"corruption '{name}' is registered twice")
        CORRUPTIONS[name] = Corruption(name, family, name in HELD_OUT, random, fn)
        return fn

    return add


def scale_of(images: torch.Tensor) -> str:
    """Which constant set the images take: 'cifar' (both sides <= 64 px) or 'imagenet'."""
    return "cifar" if max(images.shape[-2:]) <= CIFAR_MAX_SIDE else "imagenet"


def constants(table: dict[str, Sequence[Any]], images: torch.Tensor, severity: int) -> Any:
    """The severity's entry of a corruption's constant table for these images' size."""
    return table[scale_of(images)][severity - 1]


def check_severity(severity: object) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise AuditError(f"severity {severity!r} is not allowed; allowed: an integer 1 to 5")
    return severity


def check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise AuditError(
            f"images of shape {tuple(images.shape)} and dtype {images.dtype} cannot be corrupted; "
            "allowed: float (N, C, H, W) with C = 1 or 3"
        )


def corruption(name: str) -> Corruption:
    """The registered corruption called `name`."""
    from . import families  # noqa: F401 - importing the family modules registers them

    if name not in CORRUPTIONS:
        raise AuditError(f"corruption '{name}' is unknown; allowed: {allowed(sorted(CORRUPTIONS))}")
    return CORRUPTIONS[name]


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """`images` under corruption `name` at `severity` (see the module docstring for the contract)."""
    check_images(images)
    entry = corruption(name)
    out = entry.fn(images, check_severity(severity), generator)
    if out.shape != images.shape or out.dtype != images.dtype or out.device != images.device:
        raise RuntimeError(f"corruption '{name}' returned {tuple(out.shape)} {out.dtype} on {out.device}")
    return out.clamp_(0.0, 1.0)


def parse_corruptions(text: str) -> list[str]:
    """'gaussian_noise,fog' as given; 'benchmark' the 15; 'all' the 15 then the 4 held out (either alone). Names are
    checked against the full list (dashes read as underscores); duplicates and an empty list refused."""
    words = [w.strip().lower().replace("-", "_") for w in text.split(",") if w.strip()]
    if not words:
        raise AuditError(f"corruptions '{text}' name none; allowed: names of corruptions, benchmark or all")
    if words == ["benchmark"]:
        return list(BENCHMARK)
    if words == ["all"]:
        return [*BENCHMARK, *HELD_OUT]
    if "benchmark" in words or "all" in words:
        raise AuditError(f"corruptions '{text}' mix a set with names; allowed: benchmark or all alone, or names")
    known = (*BENCHMARK, *HELD_OUT)
    for word in words:
        if word not in known:
            raise AuditError(f"corruption '{word}' is unknown; allowed: {allowed(known)}, benchmark or all")
    if len(set(words)) != len(words):
        raise AuditError(f"corruptions '{text}' name one twice; allowed: each at most once")
    return words
