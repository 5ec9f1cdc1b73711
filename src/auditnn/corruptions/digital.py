"""Corruptions: contrast, elastic transform, pixelate, JPEG and saturate (registered in base.CORRUPTIONS).

Constants are those of Hendrycks' make_cifar_c.py ("cifar") and make_imagenet_c.py ("imagenet"); pixel values are
[0, 1] where the reference works on 0..255."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from .base import constants, register, scale_of
from .filters import gaussian_kernel1d
from .weather import hsv_to_rgb, rgb_to_hsv

Table = dict[str, Sequence[Any]]  # constant set ("cifar" or "imagenet") -> one entry per severity 1..5

CONTRAST_FACTOR: Table = {  # out = (x - mean) * c + mean, the mean per image and channel
    "cifar": (0.75, 0.5, 0.4, 0.3, 0.15),
    "imagenet": (0.4, 0.3, 0.2, 0.1, 0.05),
}
SATURATE: Table = {  # HSV saturation s -> clip(s * a + b, 0, 1): (a, b)
    "cifar": ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)),
    "imagenet": ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2)),
}
JPEG_QUALITY: Table = {  # libjpeg quality, 1..100
    "cifar": (80, 65, 58, 50, 40),
    "imagenet": (25, 18, 15, 10, 7),
}
PIXELATE_FACTOR: Table = {  # the image is box-resized to int(side * c) and back
    "cifar": (0.95, 0.9, 0.85, 0.75, 0.65),
    "imagenet": (0.6, 0.5, 0.4, 0.3, 0.25),
}
ELASTIC: Table = {  # (alpha, sigma, affine) as fractions of the reference's IMSIZE (ELASTIC_IMSIZE)
    "cifar": ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    "imagenet": ((2.0, 0.7, 0.1), (2.0, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)),
}
ELASTIC_IMSIZE = {"cifar": 32.0, "imagenet": 244.0}  # the reference's multiplier (244 for ImageNet, as written there)
ELASTIC_SIDE = {"cifar": 32, "imagenet": 224}  # the image side the reference's constants were written for


@register("contrast", "digital", random=False)
def contrast(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """(x - m) * c + m, clipped: m the mean of each image's channel over H and W, c from CONTRAST_FACTOR."""
    c = constants(CONTRAST_FACTOR, images, severity)
    means = images.mean((2, 3), keepdim=True)
    return ((images - means) * c + means).clamp_(0.0, 1.0)


@register("saturate", "digital", random=False)
def saturate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """HSV saturation s -> clip(s * a + b, 0, 1), hue and value kept; (a, b) from SATURATE (held out: never averaged
    into mCE). One-channel images are returned unchanged: a gray pixel has hue 0 and no saturation to scale, and the
    reference package's gray path (copy to RGB, saturate, keep the red channel) returns V, the gray level itself."""
    if images.shape[1] == 1:
        return images.clone()
    a, b = constants(SATURATE, images, severity)
    hsv = rgb_to_hsv(images)
    hsv[:, 1] = (hsv[:, 1] * a + b).clamp_(0.0, 1.0)
    return hsv_to_rgb(hsv).clamp_(0.0, 1.0)


@lru_cache(maxsize=64)
def box_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float32 weights of PIL's BOX resampling along one axis (Pillow's precompute_coeffs with the box
    filter, support 0.5 times the scale): output pixel i averages, with equal weights, the input pixels whose centres
    lie in its footprint, ((i + 0.5) * scale - scale / 2, ... + scale / 2]; when enlarging, the one input pixel under
    its centre (nearest neighbour)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    centre = (torch.arange(n_out, dtype=torch.float64)[:, None] + 0.5) * scale
    xmin = torch.floor(centre - support + 0.5).clamp(min=0)
    xmax = torch.floor(centre + support + 0.5).clamp(max=n_in)
    x = torch.arange(n_in, dtype=torch.float64)[None, :]
    arg = (x - centre + 0.5) / filterscale
    weights = ((arg > -0.5) & (arg <= 0.5) & (x >= xmin) & (x < xmax)).double()
    return (weights / weights.sum(1, keepdim=True)).float()


@register("pixelate", "digital", random=False)
def pixelate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Box-resize to (int(H * c), int(W * c)) and box-resize back (c from PIXELATE_FACTOR), as the reference's two
    PIL BOX resizes, written as one (H, H) and one (W, W) matrix (`box_resize_matrix`) applied to the whole batch.

    Deviations: no rounding to 0..255 after each resize (the reference's PIL image is uint8); the reduced size is
    int(side * c) of each side (the reference hard-codes 32 or 224 for both; imagecorruptions' rule)."""
    c = constants(PIXELATE_FACTOR, images, severity)
    h, w = images.shape[-2:]
    rows = _down_and_up(h, max(int(h * c), 1)).to(images)
    cols = _down_and_up(w, max(int(w * c), 1)).to(images)
    return rows @ images @ cols.T


def _down_and_up(n: int, small: int) -> torch.Tensor:
    """(n, n) weights of a box resize n -> small -> n."""
    return box_resize_matrix(small, n) @ box_resize_matrix(n, small)


@register("jpeg_compression", "digital", random=False)
def jpeg_compression(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Round to 0..255, encode as JPEG at quality q (JPEG_QUALITY) and decode, with torchvision's libjpeg (nvJPEG for
    3-channel images on a GPU), the whole batch in one call each way. One-channel images are encoded as grayscale
    JPEGs (the reference package encodes an RGB copy and keeps its gray level: the same luma, no chroma), on the CPU.
    Deviation: torchvision's libjpeg(-turbo) or nvJPEG build rather than PIL's; the same quality tables and 4:2:0
    chroma subsampling, so the pixels agree to within rounding (tested against PIL: mean difference under 1/255)."""
    q = int(constants(JPEG_QUALITY, images, severity))
    on_gpu = images.is_cuda and images.shape[1] == 3
    device = images.device if on_gpu else torch.device("cpu")
    pixels = (images.detach() * 255.0).round_().clamp_(0.0, 255.0).to(device=device, dtype=torch.uint8)
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        encoded = encode_jpeg(list(pixels.unbind(0)), quality=q)
        # the decoder reads its bytes from host memory, whichever device decodes (nvJPEG's encoder leaves them on the GPU)
        decoded = decode_jpeg([data.cpu() for data in encoded], mode=ImageReadMode.UNCHANGED, device=device)
    return torch.stack(decoded).to(device=images.device, dtype=images.dtype) / 255.0


def elastic_constants(images: torch.Tensor, severity: int) -> tuple[float, float, float]:
    """(alpha, sigma, affine) in pixels for these images: the reference's IMSIZE * fraction, scaled by the shorter
    side over the side the reference was written for (32 or 224), so that 32 x 32 and 224 x 224 get its exact values."""
    scale = scale_of(images)
    alpha, sigma, affine = constants(ELASTIC, images, severity)
    pixels = ELASTIC_IMSIZE[scale] * min(images.shape[-2:]) / ELASTIC_SIDE[scale]
    return alpha * pixels, sigma * pixels, affine * pixels


@lru_cache(maxsize=64)
def reflected_blur_matrix(n: int, sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """(n, n) float32 weights of a 1-D Gaussian filter (radius int(truncate * sigma + 0.5)) with half-sample
    symmetric borders (d c b a | a b c d | d c b a, repeated for kernels wider than the signal), as
    scipy.ndimage.gaussian_filter(mode='reflect'); the identity for sigma 0."""
    if sigma <= 0:
        return torch.eye(n)
    kernel = gaussian_kernel1d(sigma, truncate=truncate).double()
    radius = kernel.numel() // 2
    rows = torch.arange(n)[:, None].expand(n, kernel.numel())
    taps = torch.remainder(rows + torch.arange(-radius, radius + 1)[None, :], 2 * n)
    taps = torch.where(taps < n, taps, 2 * n - 1 - taps)
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.index_put_((rows, taps), kernel.expand(n, -1), accumulate=True)
    return matrix.float()


def affine_source_grid(shifts: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, H, W, 2) grid_sample grid (align_corners=True) of the random affine: the triangle (cx + s, cy + s),
    (cx + s, cy - s), (cx - s, cy - s) (centre (W // 2, H // 2), s = min(H, W) // 3 but at least 1, points as (x, y)) moved by
    `shifts` (N, 3, 2) pixels; each output pixel reads the source at the inverse map, as cv2.warpAffine."""
    cx, cy, s = float(w // 2), float(h // 2), float(max(min(h, w) // 3, 1))  # at least 1: a triangle on tiny images
    device = shifts.device
    corners = torch.tensor([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], device=device)
    design = torch.cat([corners, torch.ones(3, 1, device=device)], 1)  # rows (x, y, 1)
    forward = torch.linalg.solve(design, corners + shifts)  # (N, 3, 2): (x, y, 1) @ forward = (x', y')
    square = torch.zeros(shifts.shape[0], 3, 3, device=device)
    square[:, :, :2] = forward
    square[:, 2, 2] = 1.0
    inverse = torch.linalg.inv(square)  # row-vector convention: (x', y', 1) @ inverse = (x, y, 1)
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).float().reshape(-1, 3)
    source = (points @ inverse)[..., :2].reshape(-1, h, w, 2)
    return source / torch.tensor([max(w - 1, 1), max(h - 1, 1)], device=device) * 2.0 - 1.0


def elastic_warp(
    images: torch.Tensor, shifts: torch.Tensor, noise: torch.Tensor, alpha: float, sigma: float
) -> torch.Tensor:
    """The elastic transform given its random draws: `shifts` (N, 3, 2) the affine's corner moves in pixels, `noise`
    (N, 2, H, W) uniform in [-1, 1] (x then y). First the affine (bilinear, borders reflected about the edge pixels as
    cv2's BORDER_REFLECT_101), then each pixel (x, y) reads the result at (x + dx, y + dy), dx and dy the noise
    Gaussian-filtered (sigma, truncate 3, `reflected_blur_matrix`) times alpha (bilinear, half-sample symmetric
    borders, as scipy's map_coordinates(order=1, mode='reflect'))."""
    n, _, h, w = images.shape
    warped = F.grid_sample(
        images, affine_source_grid(shifts, h, w).to(images), padding_mode="reflection", align_corners=True
    )
    rows = reflected_blur_matrix(h, float(sigma)).to(images)
    cols = reflected_blur_matrix(w, float(sigma)).to(images)
    displacement = (rows @ noise.to(images) @ cols.T) * alpha  # (N, 2, H, W)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=images.device, dtype=images.dtype),
        torch.arange(w, device=images.device, dtype=images.dtype),
        indexing="ij",
    )
    gx = (2.0 * (xs + displacement[:, 0]) + 1.0) / w - 1.0
    gy = (2.0 * (ys + displacement[:, 1]) + 1.0) / h - 1.0
    grid = torch.stack([gx, gy], -1)
    return F.grid_sample(warped, grid, padding_mode="reflection", align_corners=False)


@register("elastic_transform", "digital", random=True)
def elastic_transform(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """The reference's elastic transform (a random affine of the central triangle's corners by up to `affine` pixels,
    then a smooth random displacement field of strength alpha and smoothness sigma; `elastic_warp`), each image with
    its own draws, constants from `elastic_constants`.

    Deviations: the constants, in pixels for 32 x 32 and 224 x 224 images there, scale with the shorter side for
    other sizes; the affine's triangle is centred at (W // 2, H // 2) as (x, y) (the reference passes (H // 2, W // 2),
    the same for square images); bilinear sampling by grid_sample (cv2 and scipy round coordinates to 1/32 and
    float32 differently)."""
    alpha, sigma, affine = elastic_constants(images, severity)
    n, _, h, w = images.shape
    device = images.device
    shifts = (torch.rand((n, 3, 2), generator=generator, device=device) * 2.0 - 1.0) * affine
    noise = torch.rand((n, 2, h, w), generator=generator, device=device) * 2.0 - 1.0
    return elastic_warp(images, shifts, noise, alpha, sigma).clamp_(0.0, 1.0)
