"""Corruptions: defocus, glass, motion, zoom and Gaussian blur (registered in base.CORRUPTIONS).

Constants are the reference's (Hendrycks' make_cifar_c.py and make_imagenet_c.py; the `imagecorruptions` package
has the same ImageNet set). Borders and filters follow the reference's libraries: skimage's Gaussian (replicated
borders, truncated at 4 sigma), cv2.filter2D (reflected borders, d c b | a b c d), scipy's first-order zoom (corners
aligned). Deviations, all documented where they happen:
- defocus_blur's disk kernel is renormalised to sum 1 (the reference's sums 1.013 at ImageNet severity 4);
- glass_blur swaps pixels in parallel (each pixel of the inner region takes the pixel at its random offset, one gather
  per iteration) where the reference swaps them one after another in a Python loop, and keeps floats where the
  reference truncates to 8 bits between the blurs;
- motion_blur is the `imagecorruptions` line kernel (one-sided Gaussian weights along a line at a random angle,
  replicated borders), which replaced the reference's ImageMagick motion blur; the angle is drawn per image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .base import constants, register
from .filters import depthwise
from .filters import gaussian_blur as gaussian_filter

Table = dict[str, Sequence[Any]]  # {"cifar": 5 entries, "imagenet": 5 entries}, see base.constants

GAUSSIAN_SIGMA: Table = {"cifar": [0.4, 0.6, 0.7, 0.8, 1.0], "imagenet": [1.0, 2.0, 3.0, 4.0, 6.0]}
DEFOCUS: Table = {  # (disk radius px, anti-alias sigma px)
    "cifar": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "imagenet": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
}
GLASS: Table = {  # (Gaussian sigma px, largest offset px, iterations)
    "cifar": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "imagenet": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
}
MOTION: Table = {  # (radius px, sigma px); the angle is uniform in [-45, 45) degrees
    "cifar": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "imagenet": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
}
ZOOM: Table = {  # zoom factors as numpy's arange(start, stop, step)
    "cifar": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
    "imagenet": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
}


def _border(images: torch.Tensor, radius: int, mode: str) -> str:
    """`mode`, or 'replicate' when a reflected border of `radius` px does not fit in the image."""
    return "replicate" if mode == "reflect" and radius >= min(images.shape[-2:]) else mode


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's defocus kernel (float32, 17 x 17 for radius <= 8 px, else 2 * radius + 1 square): the pixels
    within `radius` of the centre, normalised to sum 1, then smoothed by a 3 x 3 (5 x 5 above radius 8) Gaussian of
    sigma `alias_blur` with reflected borders (cv2.GaussianBlur's defaults), renormalised to sum 1. Deviation: the
    reference does not renormalise, and at ImageNet severities 4 and 5 the disk touches the kernel's edge, where the
    reflected border adds weight (sums 1.013 and 1.011: a constant image brightens by that factor)."""
    half, taps = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = torch.arange(-half, half + 1, dtype=torch.float32)
    aliased = ((grid.view(-1, 1) ** 2 + grid.view(1, -1) ** 2) <= radius**2).float()
    aliased /= aliased.sum()
    x = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    g = torch.exp(-(x**2) / (2 * alias_blur**2))
    g = (g / g.sum()).float()
    kernel = depthwise(aliased.view(1, 1, *aliased.shape), torch.outer(g, g), mode="reflect")[0, 0]
    return kernel / kernel.sum()


@register("defocus_blur", "blur", random=False)
def defocus_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Convolution with an anti-aliased disk (an out-of-focus lens), reflected borders."""
    radius, alias_blur = constants(DEFOCUS, images, severity)
    kernel = disk_kernel(radius, alias_blur).to(images.device)
    return depthwise(images, kernel, mode=_border(images, kernel.shape[0] // 2, "reflect"))


@register("gaussian_blur", "blur", random=False)
def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian filter of the severity's sigma (px), replicated borders (skimage.filters.gaussian's)."""
    return gaussian_filter(images, constants(GAUSSIAN_SIGMA, images, severity), mode="replicate")


def local_shuffle(images: torch.Tensor, delta: int, generator: torch.Generator) -> torch.Tensor:
    """Every pixel of the inner region (rows delta+1 .. H-delta, columns delta+1 .. W-delta, those the reference
    visits) takes the pixel at its own offset (dy, dx), each uniform in [-delta, delta) as numpy's randint; the other
    pixels stay. All channels move together. One gather: the reference instead swaps the pixels one after another."""
    n, c, h, w = images.shape
    offsets = torch.randint(-delta, delta, (2, n, h, w), generator=generator, device=images.device)
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    inner = (rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta)
    src = torch.where(inner, (rows + offsets[0]) * w + cols + offsets[1], rows * w + cols)
    index = src.reshape(n, 1, h * w).expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)


@register("glass_blur", "blur", random=True)
def glass_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Frosted glass: Gaussian blur, pixels shuffled locally `iterations` times (in parallel, see local_shuffle),
    Gaussian blur again (replicated borders). The reference also truncates the first blur to 8 bits (a mean shift of
    -0.5/255); we keep floats, so that a constant image stays constant."""
    sigma, delta, iterations = constants(GLASS, images, severity)
    x = gaussian_filter(images, sigma, mode="replicate")
    for _ in range(iterations):
        x = local_shuffle(x, delta, generator)
    return gaussian_filter(x, sigma, mode="replicate")


def motion_weights(radius: int, sigma: float) -> torch.Tensor:
    """The line kernel's tap weights (float64, 2 * radius + 1 of them): exp(-i^2 / (2 sigma^2)) at i = 0, 1, ...
    normalised to sum 1 (one-sided: the image is smeared towards one end of the line)."""
    i = torch.arange(2 * radius + 1, dtype=torch.float64)
    k = torch.exp(-(i**2) / (2 * sigma**2))
    return k / k.sum()


def line_blur(images: torch.Tensor, radius: int, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """Motion blur of each image along its own angle (degrees, one per image): out(y, x) = sum_i w_i img(y + oy_i,
    x + ox_i), oy_i = ceil(i sin a - 0.5), ox_i = ceil(i cos a - 0.5), borders replicated, w = motion_weights. As the
    reference, the taps stop at the first whose offset reaches the image's height or width; unlike it, the weights
    kept are renormalised to sum 1 (a constant image stays constant; images wider and taller than the kernel are
    unaffected). One gather per tap, all images at once."""
    n, c, h, w = images.shape
    weights = motion_weights(radius, sigma).to(images.device)
    width = weights.numel()
    theta = torch.deg2rad(angles.to(torch.float64)).view(n, 1)
    py, px = width * torch.sin(theta), width * torch.cos(theta)
    hypot = torch.sqrt(py**2 + px**2)
    i = torch.arange(width, dtype=torch.float64, device=images.device).view(1, width)
    oy = torch.ceil(i * py / hypot - 0.5).long()  # (N, taps)
    ox = torch.ceil(i * px / hypot - 0.5).long()
    keep = torch.cumprod(((oy.abs() < h) & (ox.abs() < w)).long(), dim=1).to(torch.float64)
    kept = (weights.view(1, width) * keep) / (weights.view(1, width) * keep).sum(dim=1, keepdim=True)
    kept = kept.to(images.dtype)
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    flat = images.reshape(n, c, h * w)
    out = torch.zeros_like(flat)
    for t in range(width):
        yy = (rows + oy[:, t].view(n, 1, 1)).clamp(0, h - 1)
        xx = (cols + ox[:, t].view(n, 1, 1)).clamp(0, w - 1)
        index = (yy * w + xx).reshape(n, 1, h * w).expand(n, c, h * w)
        out += kept[:, t].view(n, 1, 1) * flat.gather(2, index)
    return out.reshape(n, c, h, w)


@register("motion_blur", "blur", random=True)
def motion_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Camera shake: line_blur at the severity's radius and sigma, an angle uniform in [-45, 45) degrees per image."""
    radius, sigma = constants(MOTION, images, severity)
    angles = torch.rand(images.shape[0], generator=generator, device=images.device, dtype=torch.float64) * 90 - 45
    return line_blur(images, radius, sigma, angles)


def arange(start: float, stop: float, step: float) -> list[float]:
    """numpy.arange(start, stop, step)'s values (its count is ceil((stop - start) / step), so that
    arange(1, 1.11, 0.01) ends at 1.11)."""
    return [start + k * step for k in range(math.ceil((stop - start) / step))]


def clipped_zoom(images: torch.Tensor, factor: float) -> torch.Tensor:
    """The centre ceil(H / factor) x ceil(W / factor) crop enlarged by `factor` (bilinear, corners aligned: scipy's
    zoom of order 1, output size rounded as scipy does), then the centre H x W of it."""
    h, w = images.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = images[..., top : top + ch, left : left + cw]
    oh, ow = round(ch * factor), round(cw * factor)
    zoomed = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    trim_h, trim_w = (oh - h) // 2, (ow - w) // 2
    return zoomed[..., trim_h : trim_h + h, trim_w : trim_w + w]


def zoom_average(images: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    """(images + sum over factors of clipped_zoom(images, factor)) / (len(factors) + 1)."""
    out = images.clone()
    for factor in factors:
        out += clipped_zoom(images, factor)
    return out / (len(factors) + 1)


@register("zoom_blur", "blur", random=False)
def zoom_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Zooming while the shutter is open: the average of the image and its centre zooms by the severity's factors."""
    return zoom_average(images, arange(*constants(ZOOM, images, severity)))
