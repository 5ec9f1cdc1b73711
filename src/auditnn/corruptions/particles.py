"""Corruptions: snow, frost and spatter (registered in base.CORRUPTIONS).

Constants are the reference's (Hendrycks' make_cifar_c.py and make_imagenet_c.py). Spatter is a held-out corruption
the reference files under no family (ImageNet-C's `extra` set); it is registered under weather (rain or mud on the
lens), as the common use has it. Deviations, documented where they happen:
- snow blurs its flake layer with blur.line_blur (the `imagecorruptions` kernel) where the reference calls
  ImageMagick's motion blur;
- frost blends a procedural texture (crystal needles grown from random seeds, over a patchy haze, with fine grain)
  with the reference's weights, where the reference crops one of six frost photographs that we do not have;
- spatter writes cv2's Canny edges, distance transform, histogram equalisation and filters in torch: the same
  operations, except that the distance is the exact Euclidean one (cv2: a 5 x 5 mask approximation of it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .base import constants, register, scale_of
from .blur import clipped_zoom, line_blur
from .filters import depthwise
from .filters import gaussian_blur as gaussian_filter

Table = dict[str, Sequence[Any]]  # {"cifar": 5 entries, "imagenet": 5 entries}, see base.constants

SNOW: Table = {  # (mean, std of the flakes' noise, zoom, threshold, blur radius px, blur sigma px, image weight)
    "cifar": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    "imagenet": [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ],
}
FROST: Table = {  # (image weight, frost weight)
    "cifar": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "imagenet": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
}
SPATTER: Table = {  # (mean, std of the liquid's noise, its blur sigma px, threshold, intensity or mud sigma, mud?)
    "cifar": [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ],
    "imagenet": [
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ],
}
GRAY = (0.299, 0.587, 0.114)  # cv2's RGB -> gray weights (snow)
GRAY_IC = (0.2989, 0.5870, 0.1140)  # imagecorruptions' rgb2gray (spatter on one channel)
WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD = (63 / 255, 42 / 255, 20 / 255)  # mud brown
FROST_TINT = (0.9, 0.95, 1.0)  # frost is bluish white
DISTANCE_CAP = 20  # px: spatter's distance to the nearest edge is truncated here (cv2.threshold, THRESH_TRUNC)


def _rgb(rgb: Sequence[float], images: torch.Tensor) -> torch.Tensor:
    """An RGB triple as a (1, 3, 1, 1) tensor of the images' dtype and device."""
    return torch.tensor(rgb, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)


def _colour(rgb: Sequence[float], images: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """A colour as a (1, C, 1, 1) tensor for these images: the RGB triple, or for one channel its gray value."""
    return _gray(_rgb(rgb, images), weights) if images.shape[1] == 1 else _rgb(rgb, images)


def _gray(images: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """(N, 1, H, W): the weighted sum of R, G and B, or the one channel."""
    if images.shape[1] == 1:
        return images
    w = torch.tensor(weights, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def _normal(images: torch.Tensor, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """(N, 1, H, W) normal noise, one plane per image."""
    n, _, h, w = images.shape
    noise = torch.randn(n, 1, h, w, generator=generator, device=images.device, dtype=images.dtype)
    return noise * std + mean


def _uniform(images: torch.Tensor, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """(N,) uniform draws in [low, high), float64."""
    u = torch.rand(images.shape[0], generator=generator, device=images.device, dtype=torch.float64)
    return low + (high - low) * u


@register("snow", "weather", random=True)
def snow(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Falling snow: a normal noise layer, zoomed (bigger flakes), thresholded, motion-blurred at an angle uniform in
    [-135, -45) degrees and quantised to 8 bits, added twice (as is and turned 180 degrees) to the image, whose
    brightness is first lifted towards max(x, 1.5 gray + 0.5) by 1 - the image weight."""
    mean, std, zoom, threshold, radius, sigma, weight = constants(SNOW, images, severity)
    flakes = clipped_zoom(_normal(images, mean, std, generator), zoom)
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes).clamp(0.0, 1.0)
    flakes = line_blur(flakes, radius, sigma, _uniform(images, -135.0, -45.0, generator))
    flakes = torch.round(flakes * 255.0) / 255.0
    lifted = weight * images + (1 - weight) * torch.maximum(images, _gray(images, GRAY) * 1.5 + 0.5)
    return (lifted + flakes + flakes.flip(-2, -1)).clamp(0.0, 1.0)


def frost_texture(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A procedural frost layer (N, 1, H, W) in [0, 1], standing in for the reference's photographs: crystal needles
    (seeds a fraction of a percent of the pixels, each drawn out into a streak along 4 random directions per image;
    24 px long at ImageNet size, 5 px at CIFAR size, as the photographs' crystals, which the CIFAR code shrinks to a
    fifth), over a haze of random patches (0.2 to 0.5) and fine grain. Its statistics are chosen by eye, not measured
    from the photographs."""
    n, _, h, w = images.shape
    small = scale_of(images) == "cifar"
    length, seed_rate, cell = (5, 0.02, 4) if small else (24, 0.003, 16)
    dtype, device = images.dtype, images.device
    seeds = torch.rand(n, 1, h, w, generator=generator, device=device, dtype=dtype)
    brightness = torch.rand(n, 1, h, w, generator=generator, device=device, dtype=dtype) * 0.5 + 0.5
    seeds = torch.where(seeds < seed_rate, brightness, torch.zeros_like(brightness))
    radius = (length - 1) // 2
    needles = torch.zeros_like(seeds)
    for _ in range(4):  # each pass: every image's seeds drawn out along its own direction (a line sum, not a mean)
        streak = line_blur(seeds, radius, 1e6, _uniform(images, 0.0, 360.0, generator)) * (2 * radius + 1)
        needles = torch.maximum(needles, streak.clamp(0.0, 1.0))
    needles = gaussian_filter(needles, 0.5 if small else 0.8, mode="replicate")
    coarse = torch.rand(n, 1, -(-h // cell) + 1, -(-w // cell) + 1, generator=generator, device=device, dtype=dtype)
    haze = 0.2 + 0.3 * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    grain = torch.rand(n, 1, h, w, generator=generator, device=device, dtype=dtype) * 0.15
    return (haze + 0.8 * needles + grain).clamp(0.0, 1.0)


@register("frost", "weather", random=True)
def frost(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Frost on the lens: image weight * x + frost weight * a frost layer (frost_texture, tinted bluish white; its
    gray value on one channel), the reference's weights. The reference's layer is a random crop of one of six
    frost photographs."""
    image_weight, frost_weight = constants(FROST, images, severity)
    layer = frost_texture(images, generator) * _colour(FROST_TINT, images, GRAY_IC)
    return (image_weight * images + frost_weight * layer).clamp(0.0, 1.0)


def _filter3(planes: torch.Tensor, kernel: list[list[float]]) -> torch.Tensor:
    """3 x 3 correlation with cv2's default border (reflect101; replicated on images under 2 px)."""
    mode = "reflect" if min(planes.shape[-2:]) >= 2 else "replicate"
    return depthwise(planes, torch.tensor(kernel, dtype=planes.dtype, device=planes.device), mode=mode)


def canny(levels: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """cv2.Canny(levels, low, high) of (N, 1, H, W) 8-bit levels (as floats): 3 x 3 Sobel gradients (replicated
    borders), L1 magnitude, non-maximum suppression along the gradient's quadrant (OpenCV's tests, zero magnitude
    outside), hysteresis (pixels above `high`, and those above `low` 8-connected to them). Returns a bool mask."""
    padded = F.pad(levels, (1, 1, 1, 1), mode="replicate")
    sobel_x = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=levels.dtype, device=levels.device)
    gx = F.conv2d(padded, sobel_x.view(1, 1, 3, 3))
    gy = F.conv2d(padded, sobel_x.t().contiguous().view(1, 1, 3, 3))
    mag = gx.abs() + gy.abs()
    h, w = mag.shape[-2:]
    framed = F.pad(mag, (1, 1, 1, 1))  # zero magnitude outside, as OpenCV's

    def at(dy: int, dx: int) -> torch.Tensor:  # mag(y + dy, x + dx)
        return framed[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    ax, ay = gx.abs(), gy.abs()
    tan22 = math.tan(math.radians(22.5))
    horizontal = ay < ax * tan22
    vertical = ay > ax * (tan22 + 2)  # tan 67.5 = tan 22.5 + 2
    same_sign = (gx * gy) >= 0
    diagonal = torch.where(same_sign, (mag > at(-1, -1)) & (mag > at(1, 1)), (mag > at(-1, 1)) & (mag > at(1, -1)))
    peak = torch.where(
        horizontal,
        (mag > at(0, -1)) & (mag >= at(0, 1)),
        torch.where(vertical, (mag > at(-1, 0)) & (mag >= at(1, 0)), diagonal),
    )
    weak = peak & (mag > low)
    edges = weak & (mag > high)
    while True:  # hysteresis: grow the strong edges through weak pixels (all images at once)
        grown = weak & (F.max_pool2d(edges.to(levels.dtype), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def edge_distance(edges: torch.Tensor, cap: int = DISTANCE_CAP) -> torch.Tensor:
    """The Euclidean distance (px) from each pixel to the nearest edge pixel of its image, at most `cap` (N, 1, H, W):
    exact, in two passes (the nearest edge in each column within cap + 1 rows, then the best column within cap + 1)."""
    h, w = edges.shape[-2:]
    far = cap + 1
    rows = F.pad(edges.float(), (0, 0, far, far))
    column = torch.full(edges.shape, float(far), device=edges.device)
    for d in range(far, -1, -1):  # nearer rows last, so the smallest distance stays
        hit = (rows[..., far + d : far + d + h, :] > 0) | (rows[..., far - d : far - d + h, :] > 0)
        column.masked_fill_(hit, float(d))
    squared = F.pad(column, (far, far, 0, 0), value=float(far)) ** 2
    best = squared[..., far : far + w].clone()
    for e in range(1, far + 1):
        nearest = torch.minimum(squared[..., far + e : far + e + w], squared[..., far - e : far - e + w])
        best = torch.minimum(best, nearest + e * e)
    return best.sqrt().clamp(max=float(cap))


def equalize_hist(levels: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist of each image's 8-bit levels (N, 1, H, W): level -> round(255 (cdf - count of the lowest
    level present) / (pixels - that count)); an image of one level keeps it."""
    n = levels.shape[0]
    flat = levels.reshape(n, -1).long().clamp(0, 255)
    hist = torch.zeros(n, 256, dtype=torch.float64, device=levels.device).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float64)
    )
    cdf = hist.cumsum(dim=1)
    lowest = (hist > 0).float().argmax(dim=1, keepdim=True)
    first = cdf.gather(1, lowest)
    total = float(flat.shape[1])
    lut = torch.round((cdf - first) * 255.0 / (total - first).clamp(min=1.0)).clamp(0, 255)
    lut = torch.where(first == total, lowest.to(lut.dtype).expand_as(lut), lut)
    return lut.gather(1, flat).to(levels.dtype).reshape(levels.shape)


def water(images: torch.Tensor, liquid: torch.Tensor, intensity: float) -> torch.Tensor:
    """Water drops (the reference's cv2 pipeline): 8-bit liquid levels, distance to their Canny edges (<= 20 px),
    3 x 3 box blur (truncated to 8 bits), histogram equalisation, an emboss filter (rounded, saturated to 8 bits),
    a 3 x 3 box blur (rounded); m = levels * that, divided by its maximum per image, times `intensity`; the image
    plus m times pale turquoise."""
    levels = torch.floor(liquid * 255.0).clamp(0, 255)
    dist = torch.floor(_filter3(edge_distance(canny(levels, 50, 150)).to(images.dtype), [[1 / 9] * 3] * 3))
    dist = equalize_hist(dist)
    dist = torch.round(_filter3(dist, [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])).clamp(0, 255)
    dist = torch.round(_filter3(dist, [[1 / 9] * 3] * 3))
    m = levels * dist
    m = m / m.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12) * intensity
    if images.shape[1] == 3:
        return images + m * _rgb(WATER, images)
    return images + _gray((m * _rgb(WATER, images)).clamp(0.0, 1.0), GRAY_IC)  # imagecorruptions' one channel


def mud(images: torch.Tensor, liquid: torch.Tensor, threshold: float, sigma: float) -> torch.Tensor:
    """Mud: m = the liquid above the threshold, Gaussian-blurred (replicated borders), zeroed under 0.8; the image
    times 1 - m plus m times mud brown."""
    m = gaussian_filter((liquid > threshold).to(images.dtype), sigma, mode="replicate")
    m = torch.where(m < 0.8, torch.zeros_like(m), m)
    return images * (1 - m) + m * _colour(MUD, images, GRAY_IC)


@register("spatter", "weather", random=True)
def spatter(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Rain or mud on the lens: a normal noise layer, Gaussian-blurred (replicated borders) and zeroed under the
    threshold; severities with mud? = 0 add water drops (water), the others paste mud (mud)."""
    mean, std, sigma, threshold, strength, is_mud = constants(SPATTER, images, severity)
    liquid = gaussian_filter(_normal(images, mean, std, generator), sigma, mode="replicate")
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    out = mud(images, liquid, threshold, strength) if is_mud else water(images, liquid, strength)
    return out.clamp(0.0, 1.0)
