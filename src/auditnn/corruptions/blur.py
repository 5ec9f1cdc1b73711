"""Corruptions: defocus, glass, motion, zoom and Gaussian blur (registered in base.CORRUPTIONS).

Constants are the reference's (Hendrycks' make_cifar_c.py and make_imagenet_c.py; the `imagecorruptions` package
has the same ImageNet set). Borders and filters follow the reference's libraries: skimage's Gaussian (replicated
borders, truncated at 4 sigma), cv2.filter2D (reflected borders, d c b | a b c d), scipy's first-order zoom (corners
aligned). Deviations, all documented where they happen:
- defocus_blur's disk kernel is renormalised to sum 1 (the reference's sums 1.013 at ImageNet severity 4);
- glass_blur runs the reference's sequential pixel moves in waves of independent moves (same result, a few thousand
  batched steps instead of one Python step per pixel and image), and keeps floats where the reference truncates to
  8 bits between the blurs;
- motion_blur is the `imagecorruptions` line kernel (one-sided Gaussian weights along a line at a random angle,
  replicated borders), which replaced the reference's ImageMagick motion blur; the angle is drawn per image, and
  each image's kernel is applied through the FFT."""

from __future__ import annotations

import functools
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
    """Convolution with an anti-aliased disk (an out-of-focus lens), reflected borders. The kernel is cut to the
    square where its weights exceed 1e-9 (the 17 x 17 reference kernel is 3 x 3 at CIFAR severity 1); kernels wider
    than FFT_ABOVE px are applied through the FFT (same sums, float32 rounding aside)."""
    radius, alias_blur = constants(DEFOCUS, images, severity)
    kernel = trim(disk_kernel(radius, alias_blur)).to(images.device)
    mode = _border(images, kernel.shape[0] // 2, "reflect")
    return (
        fft_filter(images, kernel, mode=mode) if kernel.shape[0] > FFT_ABOVE else depthwise(images, kernel, mode=mode)
    )


FFT_ABOVE = 11  # px: wider square kernels go through the FFT (faster than a depthwise convolution on the CPU)


def trim(kernel: torch.Tensor, floor: float = 1e-9) -> torch.Tensor:
    """The centred square of an odd square kernel outside which every weight is at most `floor`, renormalised."""
    half = kernel.shape[0] // 2
    big = (kernel > floor).nonzero()
    keep = int((big - half).abs().max()) if big.numel() else 0
    cut = kernel[half - keep : half + keep + 1, half - keep : half + keep + 1]
    return cut / cut.sum()


def fft_filter(images: torch.Tensor, kernel: torch.Tensor, *, mode: str) -> torch.Tensor:
    """depthwise(images, kernel, mode=mode) through the FFT."""
    r = kernel.shape[0] // 2
    padded = F.pad(images, (r, r, r, r), mode=mode) if mode != "constant" else F.pad(images, (r, r, r, r))
    return correlate_fft(padded, kernel.to(images.dtype))


def correlate_fft(padded: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """out(y, x) = sum_ab kernels(a, b) padded(y + a, x + b) over the positions where the (k x k) kernel fits (the
    padded image less k - 1 rows and columns), every channel; kernels (k, k) or one per image (N, 1, k, k). The
    padded image times the flipped kernel's transform; the part of the circular convolution no wrap-around reaches."""
    k = kernels.shape[-1]
    size = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(kernels.flip(-2, -1), s=size)
    full = torch.fft.irfft2(spectrum, s=size)
    return full[..., k - 1 :, k - 1 :].contiguous()


@register("gaussian_blur", "blur", random=False)
def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian filter of the severity's sigma (px), replicated borders (skimage.filters.gaussian's)."""
    return gaussian_filter(images, constants(GAUSSIAN_SIGMA, images, severity), mode="replicate")


@functools.lru_cache(maxsize=32)
def copy_waves(h: int, w: int, delta: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The reference's pixel moves cut into waves that can run at once. The reference visits rows H-delta down to
    delta+1 and, in each, columns W-delta down to delta+1, and writes into each pixel the one at an offset in
    [-delta, delta)^2 (numpy's `x[h, w], x[h2, w2] = x[h2, w2], x[h, w]` on an RGB image copies, it does not swap:
    the right side holds views). Two moves depend on each other only when one writes the pixel the other reads, at
    most delta apart in row and column; so the visit of (row, col) joins wave (H-delta-row) (delta+1) +
    (W-delta-col): a wave's pixels are delta+1 columns apart (independent moves), and every move that one of them
    depends on, and comes before it in the reference's order, is in an earlier wave. Running the waves in order gives the reference's result exactly. Returns the
    visits (index into the (H-2 delta, W-2 delta) grid of visit positions, sorted by wave) and each wave's
    [start, end) slice of them."""
    rows, cols = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    ri = torch.arange(rows).view(-1, 1).expand(rows, cols).flatten()  # 0 = row H-delta (the first visited)
    ci = torch.arange(cols).view(1, -1).expand(rows, cols).flatten()
    wave = ri * (delta + 1) + ci
    order = torch.argsort(wave, stable=True)
    bounds, start = [], 0
    for count in torch.bincount(wave).tolist() if wave.numel() else []:
        if count:
            bounds.append((start, start + count))
            start += count
    return ri[order] * cols + ci[order], bounds


def move_pixels(images: torch.Tensor, delta: int, offsets: torch.Tensor) -> torch.Tensor:
    """The reference's sequential local pixel moves, all images at once: visiting rows H-delta down to delta+1 and
    in each columns W-delta down to delta+1, the pixel at (H-delta-i, W-delta-j) takes (all channels) the current
    value of the one offsets[:, n, i, j] = (dy, dx) away; run wave by wave (copy_waves). offsets: (2, N,
    H-2 delta, W-2 delta) integers in [-delta, delta)."""
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w).clone()
    visits, bounds = copy_waves(h, w, delta)
    if not bounds:
        return flat.reshape(n, c, h, w)
    cols = w - 2 * delta
    visits = visits.to(images.device)
    here = (h - delta - visits // cols) * w + (w - delta - visits % cols)  # (k,) pixel index of each visit
    there = here.view(1, -1) + offsets[0].reshape(n, -1)[:, visits] * w + offsets[1].reshape(n, -1)[:, visits]
    for start, end in bounds:
        p = here[start:end].view(1, 1, -1).expand(n, c, end - start)
        q = there[:, start:end].view(n, 1, -1).expand(n, c, end - start)
        flat.scatter_(2, p, flat.gather(2, q))
    return flat.reshape(n, c, h, w)


@register("glass_blur", "blur", random=True)
def glass_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Frosted glass: Gaussian blur, pixels moved locally `iterations` times (the reference's sequential moves, run
    in waves: move_pixels), Gaussian blur again (replicated borders). The reference also truncates the first blur to
    8 bits (a mean shift of -0.5/255); we keep floats, so that a constant image stays constant. On one channel the
    `imagecorruptions` package truly swaps (numpy scalars, not views); we move as on RGB."""
    sigma, delta, iterations = constants(GLASS, images, severity)
    x = gaussian_filter(images, sigma, mode="replicate")
    for _ in range(iterations):
        n, _, h, w = x.shape
        shape = (2, n, max(h - 2 * delta, 0), max(w - 2 * delta, 0))
        x = move_pixels(x, delta, torch.randint(-delta, delta, shape, generator=generator, device=x.device))
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
    unaffected). Each image's taps make one sparse kernel, applied to all images at once through the FFT
    (correlate_fft)."""
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
    pad = width - 1  # |offset| <= tap index
    side = 2 * pad + 1  # each image's taps as one sparse side x side kernel, applied through the FFT
    kernels = torch.zeros(n, side * side, dtype=images.dtype, device=images.device)
    kernels.scatter_add_(1, (pad + oy) * side + pad + ox, kept)
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")  # replicated borders
    return correlate_fft(padded, kernels.view(n, 1, side, side))


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
