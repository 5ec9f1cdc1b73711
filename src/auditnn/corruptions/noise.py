"""Corruptions: gaussian, shot, impulse and speckle noise (registered in base.CORRUPTIONS).

Every pixel of every channel draws its own noise from the generator, as the reference draws per array element; the
constants are those of Hendrycks' make_cifar_c.py ("cifar") and make_imagenet_c.py ("imagenet"), in pixel units of
[0, 1]. The output is clipped to [0, 1] like the reference's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import constants, register

Table = dict[str, Sequence[Any]]  # constant set ("cifar" or "imagenet") -> one entry per severity 1..5

GAUSSIAN_STD: Table = {  # standard deviation of the added noise
    "cifar": (0.04, 0.06, 0.08, 0.09, 0.10),
    "imagenet": (0.08, 0.12, 0.18, 0.26, 0.38),
}
SHOT_RATE: Table = {  # photons per unit intensity: out = Poisson(x * c) / c
    "cifar": (500, 250, 100, 75, 50),
    "imagenet": (60, 25, 12, 5, 3),
}
IMPULSE_AMOUNT: Table = {  # share of pixel values replaced by 0 or 1 (half each on average)
    "cifar": (0.01, 0.02, 0.03, 0.05, 0.07),
    "imagenet": (0.03, 0.06, 0.09, 0.17, 0.27),
}
SPECKLE_STD: Table = {  # standard deviation of the multiplicative noise: out = x + x * N(0, c^2)
    "cifar": (0.06, 0.1, 0.12, 0.16, 0.2),
    "imagenet": (0.15, 0.2, 0.35, 0.45, 0.6),
}


def _normal(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal draws of the images' shape, dtype and device."""
    return torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)


def _uniform(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1) draws of the images' shape, dtype and device."""
    return torch.rand(images.shape, generator=generator, dtype=images.dtype, device=images.device)


@register("gaussian_noise", "noise", random=True)
def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """x + N(0, c^2) per pixel value, clipped; c from GAUSSIAN_STD."""
    c = constants(GAUSSIAN_STD, images, severity)
    return (images + c * _normal(images, generator)).clamp_(0.0, 1.0)


@register("shot_noise", "noise", random=True)
def shot_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Poisson(x * c) / c per pixel value, clipped; c from SHOT_RATE (the noise's std is sqrt(x / c))."""
    c = float(constants(SHOT_RATE, images, severity))
    return (torch.poisson(images.clamp(min=0.0) * c, generator=generator) / c).clamp_(0.0, 1.0)


@register("impulse_noise", "noise", random=True)
def impulse_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Salt and pepper: each pixel value is flipped with probability c (IMPULSE_AMOUNT), a flipped value becoming 1
    or 0 with probability 1/2 each (skimage.util.random_noise(mode='s&p', amount=c), which the reference calls, as
    skimage draws it today; the channels of one pixel flip independently, as there). Deviation: the skimage of 2018
    placed exactly ceil(c * n / 2) salt and as many pepper values at positions drawn with replacement and, by an
    off-by-one, never in the last row, column or channel; we follow the current, unbiased definition."""
    c = constants(IMPULSE_AMOUNT, images, severity)
    flipped = _uniform(images, generator) < c
    salt = (_uniform(images, generator) < 0.5).to(images.dtype)
    return torch.where(flipped, salt, images)


@register("speckle_noise", "noise", random=True)
def speckle_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """x + x * N(0, c^2) per pixel value, clipped; c from SPECKLE_STD (held out: never averaged into mCE)."""
    c = constants(SPECKLE_STD, images, severity)
    return (images + images * (c * _normal(images, generator))).clamp_(0.0, 1.0)
