"""Corruptions: brightness and fog (registered in base.CORRUPTIONS), and the batched RGB <-> HSV conversions that
brightness and saturate share (skimage.color.rgb2hsv / hsv2rgb, which the reference calls, written in torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import constants, register

Table = dict[str, Sequence[Any]]  # constant set ("cifar" or "imagenet") -> one entry per severity 1..5

BRIGHTNESS_SHIFT: Table = {  # added to the HSV value (V = max over channels), then clipped to [0, 1]
    "cifar": (0.05, 0.1, 0.15, 0.2, 0.3),
    "imagenet": (0.1, 0.2, 0.3, 0.4, 0.5),
}
FOG: Table = {  # (strength: how much fractal is added, wibble decay of the plasma fractal: smaller is rougher)
    "cifar": ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)),
    "imagenet": ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
}


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] to HSV, each in [0, 1] (hue in turns), as skimage.color.rgb2hsv: V = max, S =
    (max - min) / max (0 where max - min = 0), hue from the channel holding the max (blue over green over red on
    ties), 0 for grays."""
    r, g, b = rgb.unbind(1)
    value = rgb.amax(1)
    delta = value - rgb.amin(1)
    gray = delta == 0
    safe = torch.where(gray, torch.ones_like(delta), delta)
    saturation = torch.where(gray, torch.zeros_like(delta), delta / torch.where(value == 0, 1.0, value))
    hue = torch.where(r == value, (g - b) / safe, torch.zeros_like(delta))
    hue = torch.where(g == value, 2.0 + (b - r) / safe, hue)
    hue = torch.where(b == value, 4.0 + (r - g) / safe, hue)
    hue = torch.where(gray, torch.zeros_like(hue), torch.remainder(hue / 6.0, 1.0))
    return torch.stack((hue, saturation, value), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) HSV (hue in turns) to RGB, as skimage.color.hsv2rgb: the sextant i = floor(6 h) picks which of
    v, t = v (1 - (1 - f) s), p = v (1 - s), q = v (1 - f s) each channel takes (f = 6 h - i)."""
    hue, saturation, value = hsv.unbind(1)
    sextant = torch.floor(hue * 6.0)
    f = hue * 6.0 - sextant
    sextant = torch.remainder(sextant, 6.0)
    p = value * (1.0 - saturation)
    q = value * (1.0 - f * saturation)
    t = value * (1.0 - (1.0 - f) * saturation)
    choices = (  # (r, g, b) for sextants 0..5
        (value, t, p),
        (q, value, p),
        (p, value, t),
        (p, q, value),
        (t, p, value),
        (value, p, q),
    )
    channels = []
    for channel in range(3):
        out = choices[5][channel]
        for i in range(4, -1, -1):
            out = torch.where(sextant == i, choices[i][channel], out)
        channels.append(out)
    return torch.stack(channels, 1)


@register("brightness", "weather", random=False)
def brightness(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Add c (BRIGHTNESS_SHIFT) to the HSV value V and clip it to [0, 1], hue and saturation kept. With hue and
    saturation fixed, hsv_to_rgb is linear in V, so the round trip is x * V' / V with V the pixel's max over channels
    and V' = min(V + c, 1); a black pixel (V = 0, hue and saturation 0) becomes the gray V'. Computed that way (an
    order of magnitude faster than converting; the test compares it with the conversion). One channel: c added to the
    gray level and clipped (the gray level is its value; imagecorruptions does the same)."""
    c = constants(BRIGHTNESS_SHIFT, images, severity)
    if images.shape[1] == 1:
        return (images + c).clamp_(0.0, 1.0)
    value = images.amax(1, keepdim=True)
    brighter = (value + c).clamp_(max=1.0)
    scaled = images * (brighter / torch.where(value > 0, value, torch.ones_like(value)))
    return torch.where(value > 0, scaled, brighter).clamp_(0.0, 1.0)


def plasma_fractal(
    count: int, size: int, decay: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """`count` independent diamond-square height maps, (count, size, size) float32 in [0, 1] (each map's min 0, max
    1), size a power of two; the reference's plasma_fractal (wrapping at the borders, starting wibble 100, each level's
    random offsets wibble * U(-wibble, wibble), wibble divided by `decay` per level), run on all maps at once."""
    maps = torch.zeros(count, size, size, device=device)
    step, wibble = size, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(total.shape, generator=generator, device=device) * (2.0 * wibble) - wibble
        return total / 4.0 + wibble * noise

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        squares = corners + torch.roll(corners, -1, 1)
        squares = squares + torch.roll(squares, -1, 2)
        maps[:, half::step, half::step] = wibbled_mean(squares)
        centres = maps[:, half::step, half::step]
        corners = maps[:, 0::step, 0::step]
        left = centres + torch.roll(centres, 1, 1) + corners + torch.roll(corners, -1, 2)
        maps[:, 0::step, half::step] = wibbled_mean(left)
        top = centres + torch.roll(centres, 1, 2) + corners + torch.roll(corners, -1, 1)
        maps[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    maps = maps - maps.amin((1, 2), keepdim=True)
    return maps / maps.amax((1, 2), keepdim=True)


def next_power_of_two(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


@register("fog", "weather", random=True)
def fog(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """(x + s * F) * m / (m + s), clipped: F a plasma fractal (`plasma_fractal`, wibble decay from FOG) cropped to the
    image's top-left H x W and shared by its channels, s the strength (FOG), m the image's maximum over all its
    pixels and channels.

    Deviations: every image draws its own fractal (the reference also draws one per call, that is per image; only the
    random stream differs); the fractal's side is the next power of two of the image's longer side (the reference's
    256 for 224 x 224 and 32 for 32 x 32, so the same there; imagecorruptions' rule for other sizes)."""
    strength, decay = constants(FOG, images, severity)
    n, _, h, w = images.shape
    side = max(next_power_of_two(max(h, w)), 2)  # a 1 x 1 map would be constant (no level of the algorithm runs)
    fractal = plasma_fractal(n, side, decay, generator, images.device)[:, None, :h, :w]
    peak = images.amax((1, 2, 3), keepdim=True)
    out = (images + strength * fractal.to(images.dtype)) * (peak / (peak + strength))
    return out.clamp_(0.0, 1.0)
