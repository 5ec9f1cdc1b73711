"""Filtering helpers the corruptions share: depthwise convolution with reflected borders and Gaussian kernels (as
scipy.ndimage / skimage.filters.gaussian compute them, truncated at 4 sigma by default)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, *, truncate: float = 4.0, device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian weights of radius int(truncate * sigma + 0.5), float32 (scipy.ndimage's choice)."""
    radius = max(int(truncate * sigma + 0.5), 0)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    weights = torch.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else (x == 0).double()
    return (weights / weights.sum()).float()


def depthwise(images: torch.Tensor, kernel: torch.Tensor, *, mode: str = "reflect") -> torch.Tensor:
    """Every channel of (N, C, H, W) convolved with one 2-D kernel (kh, kw) (odd sizes), same size out. Borders:
    'reflect' (d c b | a b c d | c b a), 'replicate' or 'constant' (zeros). Correlation, as scipy's: the kernels here
    are symmetric."""
    kh, kw = kernel.shape
    channels = images.shape[1]
    pad = (kw // 2, kw // 2, kh // 2, kh // 2)
    padded = F.pad(images, pad, mode=mode) if mode != "constant" else F.pad(images, pad)
    weight = kernel.to(images).expand(channels, 1, kh, kw)
    return F.conv2d(padded, weight, groups=channels)


def gaussian_blur(images: torch.Tensor, sigma: float, *, mode: str = "reflect", truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian filter of standard deviation `sigma` pixels over H and W of every channel. A reflected
    border needs the image to be larger than the kernel's radius; a wider kernel falls back to replicated borders."""
    if sigma <= 0:
        return images.clone()
    k = gaussian_kernel1d(sigma, truncate=truncate, device=images.device)
    radius = k.numel() // 2
    if mode == "reflect" and radius >= min(images.shape[-2:]):
        mode = "replicate"
    out = depthwise(images, k.view(1, -1), mode=mode)
    return depthwise(out, k.view(-1, 1), mode=mode)
