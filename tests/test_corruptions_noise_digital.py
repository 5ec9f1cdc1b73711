"""The noise, digital, brightness and fog corruptions (issue 16): the contract on every severity, 1 and 3 channels and
both constant sets, and each corruption's defining property computed a second way (analytic values, the standard
library's colorsys, PIL, scipy, per-image loops)."""

from __future__ import annotations

import colorsys
import io
import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from auditnn.corruptions import corrupt, corruption
from auditnn.corruptions.digital import (
    ELASTIC,
    JPEG_QUALITY,
    PIXELATE_FACTOR,
    SATURATE,
    elastic_constants,
    elastic_warp,
    reflected_blur_matrix,
)
from auditnn.corruptions.filters import gaussian_blur
from auditnn.corruptions.noise import GAUSSIAN_STD, IMPULSE_AMOUNT, SHOT_RATE, SPECKLE_STD
from auditnn.corruptions.weather import BRIGHTNESS_SHIFT, FOG, hsv_to_rgb, plasma_fractal, rgb_to_hsv

NOISE = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"]
DIGITAL = ["contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"]
WEATHER = ["brightness", "fog"]
MINE = NOISE + DIGITAL + WEATHER
SIZES = [(32, 32), (70, 90)]  # the CIFAR-size set; the ImageNet-size set on a non-square image
SCALE = {(32, 32): "cifar", (70, 90): "imagenet"}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scene(n: int, channels: int, h: int, w: int) -> torch.Tensor:
    """A natural-ish batch: smooth colour gradients, a fine random texture (noise blurred at 1 px), a bright disc with
    a sharp edge and a dark bar, different per image; float32 in [0, 1]."""
    ys = torch.linspace(0.0, 1.0, h)[:, None]
    xs = torch.linspace(0.0, 1.0, w)[None, :]
    texture = gaussian_blur(torch.rand((n, channels, h, w), generator=seeded(123)), 1.0)
    texture = (texture - texture.mean()) / texture.std() * 0.1
    images = []
    for i in range(n):
        planes = []
        for c in range(channels):
            ramp = 0.25 + 0.4 * (xs * (c + 1 + i) / (channels + n) + ys * (channels - c) / channels) / 2
            disc = ((xs - 0.3 - 0.1 * i) ** 2 + (ys - 0.6) ** 2 < 0.05).float() * (0.3 - 0.1 * c)
            bar = ((ys > 0.15) & (ys < 0.25)).float() * -0.2
            planes.append((ramp + disc + bar + texture[i, c]).clamp(0.0, 1.0))
        images.append(torch.stack(planes))
    return torch.stack(images)


# ---------------------------------------------------------------- the contract, every corruption and severity


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", MINE)
def test_contract_shape_range_and_seeding(name: str, severity: int, channels: int, size: tuple[int, int]) -> None:
    images = scene(3, channels, *size)
    before = images.clone()
    entry = corruption(name)
    raw = entry.fn(images, severity, seeded(0))  # the function itself keeps the range, not only corrupt's clamp
    assert raw.shape == images.shape and raw.dtype == images.dtype and raw.device == images.device
    assert torch.isfinite(raw).all() and raw.min() >= 0.0 and raw.max() <= 1.0
    torch.testing.assert_close(images, before, rtol=0, atol=0)  # the input is not modified
    again = corrupt(images, name, severity, seeded(0))
    torch.testing.assert_close(again, raw, rtol=0, atol=0)  # same seed, same pixels
    other = corrupt(images, name, severity, seeded(1))
    if entry.random:
        assert not torch.equal(other, raw)
    else:
        torch.testing.assert_close(other, raw, rtol=0, atol=0)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 4)])
@pytest.mark.parametrize("name", MINE)
def test_tiny_images_keep_the_contract(name: str, size: tuple[int, int]) -> None:
    images = torch.rand((2, 3, *size), generator=seeded(0))
    for severity in (1, 5):
        out = corruption(name).fn(images, severity, seeded(severity))
        assert out.shape == images.shape and torch.isfinite(out).all() and 0.0 <= out.min() <= out.max() <= 1.0


def test_registration_families_and_held_out() -> None:
    families = {name: corruption(name).family for name in MINE}
    assert families == {
        **dict.fromkeys(NOISE, "noise"),
        **dict.fromkeys(DIGITAL, "digital"),
        **{w: "weather" for w in WEATHER},
    }
    assert {n for n in MINE if corruption(n).held_out} == {"speckle_noise", "saturate"}
    randoms = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "elastic_transform", "fog"}
    assert {n for n in MINE if corruption(n).random} == randoms


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(set(MINE) - {"elastic_transform", "saturate"}))
def test_severities_are_monotone_in_distance(name: str, channels: int, size: tuple[int, int]) -> None:
    """Mean |out - in| grows with severity on the scene (same seed at every severity). Not for elastic_transform
    (the reference's constants trade a large affine at severity 1 for a local field later) nor saturate (severities 1-2
    desaturate, 3-5 saturate); fog's ImageNet-size severities 3 and 4 share the strength 2.5 and differ only in the
    fractal's roughness, so that one pair is only required not to move much."""
    images = scene(4, channels, *size)
    distances = [(corrupt(images, name, s, seeded(3)) - images).abs().mean().item() for s in range(1, 6)]
    for severity, (a, b) in enumerate(pairwise(distances), start=1):
        if name == "fog" and FOG[SCALE[size]][severity - 1][0] == FOG[SCALE[size]][severity][0]:
            assert abs(b - a) < 0.1 * a, distances
        else:
            assert a < b, distances


# ---------------------------------------------------------------- noise: measured std and share against analytic values


def clipped_normal_std(mean: float, std: float) -> float:
    """Standard deviation of clip(mean + std * Z, 0, 1), by quadrature of the normal density (second way)."""
    z = torch.linspace(-12.0, 12.0, 400_001, dtype=torch.float64)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    values = (mean + std * z).clamp(0.0, 1.0)
    dz = float(z[1] - z[0])
    first = float((values * density).sum()) * dz
    second = float((values * values * density).sum()) * dz
    return math.sqrt(second - first * first)


def clipped_poisson_std(x: float, rate: float) -> float:
    """Standard deviation of clip(K / rate, 0, 1), K ~ Poisson(x * rate), from the probability mass function."""
    k = torch.arange(0, 2000, dtype=torch.float64)
    lam = x * rate
    pmf = torch.exp(k * math.log(lam) - lam - torch.lgamma(k + 1))
    values = (k / rate).clamp(0.0, 1.0)
    first = float((values * pmf).sum())
    return math.sqrt(float((values * values * pmf).sum()) - first * first)


NOISE_SHAPES = {"cifar": (8, 3, 32, 32), "imagenet": (2, 3, 70, 90)}


@pytest.mark.parametrize("scale", ["cifar", "imagenet"])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "speckle_noise"])
def test_noise_std_on_mid_gray_is_the_analytic_one(name: str, severity: int, scale: str) -> None:
    gray = torch.full(NOISE_SHAPES[scale], 0.5)
    out = corrupt(gray, name, severity, seeded(severity))
    if name == "gaussian_noise":
        c = GAUSSIAN_STD[scale][severity - 1]
        expected = clipped_normal_std(0.5, c)
        if c <= 0.12:  # clipping at 0.5 / c >= 4 sigma is negligible: the std is c itself
            assert expected == pytest.approx(c, rel=1e-3)
    elif name == "speckle_noise":
        expected = clipped_normal_std(0.5, 0.5 * SPECKLE_STD[scale][severity - 1])
    else:
        rate = SHOT_RATE[scale][severity - 1]
        expected = clipped_poisson_std(0.5, rate)
        if rate >= 50:  # sqrt(x / c) when the clip at 1 is out of reach
            assert expected == pytest.approx(math.sqrt(0.5 / rate), rel=1e-3)
    measured = float((out - gray).std())
    assert measured == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("scale", ["cifar", "imagenet"])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_impulse_noise_changes_the_share_c_half_to_salt(severity: int, scale: str) -> None:
    gray = torch.full(NOISE_SHAPES[scale], 0.5)
    out = corrupt(gray, "impulse_noise", severity, seeded(severity))
    c = IMPULSE_AMOUNT[scale][severity - 1]
    count = gray.numel()
    changed = out != 0.5
    assert set(out[changed].unique().tolist()) <= {0.0, 1.0}
    share = changed.float().mean().item()
    assert abs(share - c) < 5 * math.sqrt(c * (1 - c) / count)
    flips = int(changed.sum())
    salt = (out == 1.0).sum().item() / flips
    assert abs(salt - 0.5) < 5 * math.sqrt(0.25 / flips)


def test_speckle_noise_equals_a_per_image_loop_on_the_same_draws() -> None:
    images = scene(3, 3, 32, 32)
    out = corrupt(images, "speckle_noise", 4, seeded(7))
    c = SPECKLE_STD["cifar"][3]
    draws = torch.randn(images.shape, generator=seeded(7))
    for i in range(3):
        by_hand = np.clip(images[i].numpy() * (1.0 + c * draws[i].numpy()), 0.0, 1.0)
        np.testing.assert_allclose(out[i].numpy(), by_hand, atol=1e-6)


# ---------------------------------------------------------------- weather: brightness, HSV, fog


def test_hsv_round_trip_matches_colorsys_per_pixel() -> None:
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 6, 7)
    pixels[0, :, 0, 0] = torch.tensor([0.3, 0.3, 0.3])  # a gray
    pixels[0, :, 0, 1] = torch.tensor([0.0, 0.0, 0.0])  # black
    pixels[0, :, 0, 2] = torch.tensor([0.8, 0.8, 0.1])  # a tie on the max
    hsv = rgb_to_hsv(pixels)
    for i in range(6):
        for j in range(7):
            expected = colorsys.rgb_to_hsv(*pixels[0, :, i, j].tolist())
            np.testing.assert_allclose(hsv[0, :, i, j].numpy(), expected, atol=1e-6)
    torch.testing.assert_close(hsv_to_rgb(hsv), pixels, atol=1e-6, rtol=0)
    some = torch.rand(1, 3, 5, 5)
    back = hsv_to_rgb(some)
    for i in range(5):
        for j in range(5):
            np.testing.assert_allclose(
                back[0, :, i, j].numpy(), colorsys.hsv_to_rgb(*some[0, :, i, j].tolist()), atol=1e-6
            )


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_brightness_is_the_analytic_value(severity: int, size: tuple[int, int]) -> None:
    """Hue and saturation fixed, RGB is proportional to V: a pixel of max v becomes x * min(v + c, 1) / v; black
    becomes the gray c; a gray image adds c and clips."""
    c = BRIGHTNESS_SHIFT[SCALE[size]][severity - 1]
    colour = torch.tensor([0.2, 0.45, 0.7])
    images = colour[None, :, None, None].expand(2, 3, *size).clone()
    images[1] = 0.0
    images[0, :, : size[0] // 2] = torch.tensor([0.9, 0.6, 0.3])[:, None, None]  # a second value, v = 0.9
    out = corrupt(images, "brightness", severity, seeded(0))
    for value, pixel in ((0.7, colour), (0.9, torch.tensor([0.9, 0.6, 0.3]))):
        expected = pixel * min(value + c, 1.0) / value
        where = (images[0] == pixel[:, None, None]).all(0)
        torch.testing.assert_close(out[0][:, where], expected[:, None].expand(3, int(where.sum())), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], torch.full_like(out[1], c), atol=1e-6, rtol=0)
    gray = torch.tensor([0.1, 0.8]).repeat_interleave(size[0] * size[1] // 2).reshape(1, 1, *size)
    torch.testing.assert_close(corrupt(gray, "brightness", severity, seeded(0)), (gray + c).clamp(0, 1))
    natural = scene(2, 3, *size)
    hsv = rgb_to_hsv(natural)
    hsv[:, 2] = (hsv[:, 2] + c).clamp(0, 1)
    through_hsv = hsv_to_rgb(hsv).clamp(0, 1)  # the reference's round trip, converted (second way)
    torch.testing.assert_close(corrupt(natural, "brightness", severity, seeded(0)), through_hsv, atol=1e-6, rtol=0)


def plasma_by_hand(size: int, decay: float, generator: torch.Generator) -> np.ndarray:
    """The reference's diamond-square on one map, as plain loops over the grid (second way), drawing the same numbers
    in the same order as the batched version does for one map."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0

    def draws(shape: tuple[int, int]) -> np.ndarray:
        return (torch.rand((1, *shape), generator=generator)[0].double().numpy() * 2 * wibble - wibble) * wibble

    while step >= 2:
        half, cells = step // 2, size // step
        noise = draws((cells, cells))
        for a in range(cells):
            for b in range(cells):
                i, j = a * step, b * step
                corners = grid[i, j] + grid[(i + step) % size, j] + grid[i, (j + step) % size]
                corners += grid[(i + step) % size, (j + step) % size]
                grid[i + half, j + half] = corners / 4 + noise[a, b]
        noise = draws((cells, cells))
        for a in range(cells):
            for b in range(cells):
                i, j = a * step, b * step + half
                total = grid[i + half, j] + grid[(i - half) % size, j] + grid[i, j - half] + grid[i, (j + half) % size]
                grid[i, j] = total / 4 + noise[a, b]
        noise = draws((cells, cells))
        for a in range(cells):
            for b in range(cells):
                i, j = a * step + half, b * step
                total = grid[i, j + half] + grid[i, (j - half) % size] + grid[i - half, j] + grid[(i + half) % size, j]
                grid[i, j] = total / 4 + noise[a, b]
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def test_plasma_fractal_matches_the_diamond_square_by_hand_and_differs_per_image() -> None:
    one = plasma_fractal(1, 16, 2.0, seeded(5), torch.device("cpu"))
    np.testing.assert_allclose(one[0].double().numpy(), plasma_by_hand(16, 2.0, seeded(5)), atol=1e-5)
    three = plasma_fractal(3, 16, 2.0, seeded(5), torch.device("cpu"))
    assert three.amin((1, 2)).tolist() == [0.0, 0.0, 0.0] and three.amax((1, 2)).tolist() == [1.0, 1.0, 1.0]
    assert not torch.equal(three[0], three[1])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_fog_is_the_formula_on_its_fractal(severity: int, size: tuple[int, int]) -> None:
    """(x + s F) m / (m + s) per image, F the image's own fractal (the same draws: fog draws nothing else)."""
    images = scene(2, 3, *size)
    out = corrupt(images, "fog", severity, seeded(9))
    strength, decay = FOG[SCALE[size]][severity - 1]
    side = 32 if size == (32, 32) else 128
    fractal = plasma_fractal(2, side, decay, seeded(9), torch.device("cpu"))
    for i in range(2):
        peak = float(images[i].max())
        expected = (images[i] + strength * fractal[i, : size[0], : size[1]]) * peak / (peak + strength)
        torch.testing.assert_close(out[i], expected.clamp(0, 1), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- digital: contrast, saturate, pixelate, JPEG, elastic


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_contrast_on_a_two_value_image_is_the_analytic_value(severity: int, size: tuple[int, int]) -> None:
    c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1] if size == (32, 32) else [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    images = torch.full((1, 3, *size), 0.2)
    images[:, :, :, : size[1] // 2] = 0.8  # half 0.8, half 0.2: mean 0.5
    images[:, 2] = 0.6  # a constant channel stays put
    out = corrupt(images, "contrast", severity, seeded(0))
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor(0.5 + 0.3 * c))
    torch.testing.assert_close(out[0, 0, 0, -1], torch.tensor(0.5 - 0.3 * c))
    torch.testing.assert_close(out[0, 2], images[0, 2])


def test_saturate_matches_colorsys_per_pixel_and_leaves_gray_images() -> None:
    images = scene(2, 3, 6, 5)
    for scale, size in (("cifar", (6, 5)), ("imagenet", (66, 5))):
        batch = torch.nn.functional.interpolate(images, size=size) if size != (6, 5) else images
        for severity in range(1, 6):
            a, b = SATURATE[scale][severity - 1]
            out = corrupt(batch, "saturate", severity, seeded(0))
            for n, i, j in ((0, 0, 0), (1, 3, 2), (0, size[0] - 1, 4), (1, 1, 1)):
                h, s, v = colorsys.rgb_to_hsv(*batch[n, :, i, j].tolist())
                expected = colorsys.hsv_to_rgb(h, min(max(s * a + b, 0.0), 1.0), v)
                np.testing.assert_allclose(out[n, :, i, j].numpy(), expected, atol=1e-5)
    gray = scene(2, 1, 32, 32)
    torch.testing.assert_close(corrupt(gray, "saturate", 5, seeded(0)), gray, rtol=0, atol=0)


def to_pil(image: torch.Tensor) -> Image.Image:
    array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def from_pil(image: Image.Image, channels: int) -> torch.Tensor:
    array = torch.from_numpy(np.asarray(image).copy()).float() / 255
    return array[None] if channels == 1 else array.permute(2, 0, 1)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_pixelate_matches_pil_box_resizes_per_image(severity: int, channels: int, size: tuple[int, int]) -> None:
    """PIL's BOX down and up on the uint8 image (second way); ours skips the uint8 rounding between the two."""
    images = (scene(2, channels, *size) * 255).round() / 255
    out = corrupt(images, "pixelate", severity, seeded(0))
    c = PIXELATE_FACTOR[SCALE[size]][severity - 1]
    h, w = size
    for i in range(2):
        small = to_pil(images[i]).resize((int(w * c), int(h * c)), Image.Resampling.BOX)
        expected = from_pil(small.resize((w, h), Image.Resampling.BOX), channels)
        assert (out[i] - expected).abs().max() <= 1.01 / 255


@pytest.mark.parametrize("name", ["pixelate", "elastic_transform"])
@pytest.mark.parametrize("size", SIZES)
def test_a_constant_image_stays_constant(name: str, size: tuple[int, int]) -> None:
    flat = torch.full((2, 3, *size), 0.37)
    for severity in range(1, 6):
        torch.testing.assert_close(corrupt(flat, name, severity, seeded(severity)), flat, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_decodes_differs_is_closer_at_severity_1_and_matches_pil(channels: int, size: tuple[int, int]) -> None:
    images = scene(3, channels, *size)
    errors = []
    for severity in range(1, 6):
        out = corrupt(images, "jpeg_compression", severity, seeded(0))
        assert out.shape == images.shape and not torch.equal(out, images)
        assert torch.equal(out, (out * 255).round() / 255)  # decoded 8-bit values
        errors.append((out - images).abs().mean().item())
        quality = JPEG_QUALITY[SCALE[size]][severity - 1]
        for i in range(3):
            buffer = io.BytesIO()
            to_pil(images[i]).save(buffer, "JPEG", quality=quality)
            expected = from_pil(Image.open(buffer), channels)
            assert (out[i] - expected).abs().mean() < 1.0 / 255  # PIL's libjpeg, per image (second way)
    assert errors[0] < errors[4]


def test_reflected_blur_matrix_matches_scipy() -> None:
    torch.manual_seed(0)
    field = torch.rand(9, 13, dtype=torch.float64) * 2 - 1
    for sigma in (0.7, 2.0, 20.0):  # 20: the kernel is wider than the field, reflected repeatedly
        ours = reflected_blur_matrix(9, sigma).double() @ field @ reflected_blur_matrix(13, sigma).double().T
        theirs = ndimage.gaussian_filter(field.numpy(), sigma, mode="reflect", truncate=3)
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-6)
    torch.testing.assert_close(reflected_blur_matrix(5, 0.0), torch.eye(5))


def elastic_by_hand(image: np.ndarray, shifts: np.ndarray, noise: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
    """One (C, H, W) image through the reference's steps with scipy (second way): the affine solved with numpy and
    applied by affine_transform(mode='mirror'), then map_coordinates(mode='reflect') at the Gaussian-filtered field."""
    c, h, w = image.shape
    cx, cy, s = w // 2, h // 2, min(h, w) // 3
    source = np.array([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], dtype=np.float64)
    target = source + shifts
    forward = np.linalg.solve(np.c_[source, np.ones(3)], target).T  # (2, 3): (x', y') = forward @ (x, y, 1)
    square = np.vstack([forward, [0, 0, 1]])
    inverse = np.linalg.inv(square)
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # (x, y) <-> (row, col)
    rc = swap @ inverse @ swap
    out = np.empty_like(image)
    if sigma > 0:
        dx = ndimage.gaussian_filter(noise[0], sigma, mode="reflect", truncate=3) * alpha
        dy = ndimage.gaussian_filter(noise[1], sigma, mode="reflect", truncate=3) * alpha
    else:
        dx, dy = noise[0] * alpha, noise[1] * alpha
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for k in range(c):
        warped = ndimage.affine_transform(image[k], rc[:2, :2], offset=rc[:2, 2], order=1, mode="mirror")
        out[k] = ndimage.map_coordinates(warped, [rows + dy, cols + dx], order=1, mode="reflect")
    return out


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_elastic_matches_scipy_per_image_on_the_same_draws(severity: int, size: tuple[int, int]) -> None:
    images = scene(2, 3, *size).double()
    alpha, sigma, affine = elastic_constants(images, severity)
    generator = seeded(11)
    shifts = (torch.rand((2, 3, 2), generator=generator) * 2 - 1) * affine
    noise = torch.rand((2, 2, *size), generator=generator) * 2 - 1
    ours = elastic_warp(images, shifts, noise, alpha, sigma)
    for i in range(2):
        theirs = elastic_by_hand(images[i].numpy(), shifts[i].double().numpy(), noise[i].double().numpy(), alpha, sigma)
        np.testing.assert_allclose(ours[i].numpy(), theirs, atol=2e-4)
    through = corrupt(images.float(), "elastic_transform", severity, seeded(11))
    torch.testing.assert_close(through, ours.float().clamp(0, 1), atol=1e-4, rtol=0)


def test_elastic_constants_are_the_references_at_its_sizes() -> None:
    cifar = torch.zeros(1, 3, 32, 32)
    imagenet = torch.zeros(1, 3, 224, 224)
    for severity in range(1, 6):
        frac = ELASTIC["cifar"][severity - 1]
        assert elastic_constants(cifar, severity) == pytest.approx(tuple(32 * f for f in frac))
        frac = ELASTIC["imagenet"][severity - 1]
        assert elastic_constants(imagenet, severity) == pytest.approx(tuple(244 * f for f in frac))
    assert elastic_constants(imagenet, 1) == pytest.approx((488.0, 170.8, 24.4))
