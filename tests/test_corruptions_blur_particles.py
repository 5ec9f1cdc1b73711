"""The blur, snow, frost and spatter corruptions: the contract at every severity (1 and 3 channels, a CIFAR-size and a
non-square ImageNet-size image), seeding, the blurs' defining property (a constant image stays constant), defocus and
Gaussian blur against a plain per-image convolution written here, the other kernels against hand-computed cases, and
severities monotone in distance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from auditnn.corruptions import CORRUPTIONS, corrupt, corruption
from auditnn.corruptions.blur import arange, clipped_zoom, disk_kernel, line_blur, local_shuffle
from auditnn.corruptions.particles import FROST, SPATTER, WATER, canny, edge_distance, equalize_hist

BLURS = ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur")
PARTICLES = ("snow", "frost", "spatter")
SIZES = ((32, 32), (70, 90))  # CIFAR-size constants; ImageNet-size constants on a non-square image


def textured(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A checkerboard of cells an eighth of the longer side (0.2 and 0.8) with a little noise, in [0, 1]."""
    cell = max(h, w) // 8
    y = torch.arange(h).view(h, 1) // cell
    x = torch.arange(w).view(1, w) // cell
    board = (0.2 + 0.6 * ((x + y) % 2)).float().expand(n, c, h, w)
    noise = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 0.05
    return (board + noise).clamp(0.0, 1.0)


def run(name: str, images: torch.Tensor, severity: int, seed: int = 0) -> torch.Tensor:
    return corrupt(images, name, severity, torch.Generator(device=images.device).manual_seed(seed))


def test_registered_with_the_reference_families():
    for name in BLURS:
        assert corruption(name).family == "blur"
    for name in PARTICLES:
        assert corruption(name).family == "weather"
    assert corruption("gaussian_blur").held_out and corruption("spatter").held_out
    assert not any(CORRUPTIONS[n].held_out for n in ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"))
    assert [n for n in (*BLURS, *PARTICLES) if CORRUPTIONS[n].random] == ["glass_blur", "motion_blur", *PARTICLES]


@pytest.mark.parametrize("name", BLURS + PARTICLES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", (1, 3))
def test_contract_kept_at_every_severity(name, size, channels):
    images = textured(2, channels, *size)
    before = images.clone()
    for severity in range(1, 6):
        out = run(name, images, severity)
        assert out.shape == images.shape and out.dtype == torch.float32 and out.device == images.device
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 and bool(torch.isfinite(out).all())
        assert not torch.equal(out, images), f"{name} at severity {severity} left the images as they were"
        torch.testing.assert_close(images, before, rtol=0, atol=0)  # the input is not written to
        torch.testing.assert_close(run(name, images, severity), out, rtol=0, atol=0)  # same seed, same pixels
        if CORRUPTIONS[name].random:
            assert not torch.equal(run(name, images, severity, seed=1), out), f"{name}: another seed, same pixels"


@pytest.mark.parametrize("name", BLURS)
@pytest.mark.parametrize("size", (*SIZES, (5, 7)))
def test_blurs_keep_a_constant_image_constant(name, size):
    flat = torch.full((2, 3, *size), 0.37)
    for severity in range(1, 6):
        torch.testing.assert_close(run(name, flat, severity), flat, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", BLURS)
@pytest.mark.parametrize("size", SIZES)
def test_blur_severities_monotone_in_distance(name, size):
    images = textured(4, 3, *size)
    distance = [float((run(name, images, s) - images).abs().mean()) for s in range(1, 6)]
    # non-decreasing: CIFAR motion blur 3 -> 4 only adds taps of weight exp(-169 / 8) ~ 1e-9, and CIFAR glass blur
    # 1 -> 2 only widens sigma 0.05 -> 0.25 around the same shuffle (which smooths it a little): 1% slack there
    slack = 0.01 if name == "glass_blur" else 1e-6
    assert all(b >= a * (1 - slack) for a, b in zip(distance[:-1], distance[1:], strict=True)), distance
    assert distance[-1] > 1.5 * distance[0], distance


def plain_conv(images: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Each image and channel on its own, padded then convolved: a second way to a depthwise filter."""
    r = kernel.shape[0] // 2
    rows = []
    for image in images:
        channels = []
        for plane in image:
            padded = F.pad(plane.view(1, 1, *plane.shape), (r, r, r, r), mode=mode)
            channels.append(F.conv2d(padded, kernel.view(1, 1, *kernel.shape))[0, 0])
        rows.append(torch.stack(channels))
    return torch.stack(rows)


def disk_by_hand(radius: float, alias_blur: float) -> torch.Tensor:
    half, taps = (8, 3) if radius <= 8 else (int(radius), 5)
    size = 2 * half + 1
    disk = torch.zeros(size, size)
    for i in range(size):
        for j in range(size):
            disk[i, j] = 1.0 if (i - half) ** 2 + (j - half) ** 2 <= radius**2 else 0.0
    disk /= disk.sum()
    g = [math.exp(-((t - (taps - 1) / 2) ** 2) / (2 * alias_blur**2)) for t in range(taps)]
    g = [v / sum(g) for v in g]
    out = torch.zeros_like(disk)

    def at(i: int, j: int) -> float:  # cv2's default border: reflect101
        i = -i if i < 0 else (2 * (size - 1) - i if i >= size else i)
        j = -j if j < 0 else (2 * (size - 1) - j if j >= size else j)
        return float(disk[i, j])

    r = taps // 2
    for i in range(size):
        for j in range(size):
            out[i, j] = sum(g[a] * g[b] * at(i + a - r, j + b - r) for a in range(taps) for b in range(taps))
    return out / out.sum()  # renormalised (the reference's sums 1.013 at ImageNet severity 4)


@pytest.mark.parametrize("scale, size", (("cifar", (32, 32)), ("imagenet", (70, 90))))
def test_defocus_blur_equals_a_plain_convolution_with_the_disk(scale, size):
    from auditnn.corruptions.blur import DEFOCUS

    images = textured(2, 3, *size)
    for severity in range(1, 6):
        radius, alias = DEFOCUS[scale][severity - 1]
        kernel = disk_by_hand(radius, alias)
        torch.testing.assert_close(disk_kernel(radius, alias), kernel, rtol=0, atol=1e-6)
        expected = plain_conv(images, kernel, "reflect").clamp(0, 1)
        torch.testing.assert_close(run("defocus_blur", images, severity), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale, size", (("cifar", (32, 32)), ("imagenet", (70, 90))))
def test_gaussian_blur_equals_a_plain_convolution_with_the_gaussian(scale, size):
    from auditnn.corruptions.blur import GAUSSIAN_SIGMA

    images = textured(2, 1, *size)
    for severity in range(1, 6):
        sigma = GAUSSIAN_SIGMA[scale][severity - 1]
        r = int(4 * sigma + 0.5)
        g = torch.tensor([math.exp(-0.5 * (t / sigma) ** 2) for t in range(-r, r + 1)], dtype=torch.float64)
        kernel = torch.outer(g, g) / g.sum() ** 2
        expected = plain_conv(images.double(), kernel, "replicate").float().clamp(0, 1)  # skimage: mode nearest
        torch.testing.assert_close(run("gaussian_blur", images, severity), expected, rtol=0, atol=1e-5)


def test_line_blur_along_the_axes_by_hand():
    images = torch.rand(2, 2, 6, 7, generator=torch.Generator().manual_seed(3))
    radius, sigma = 2, 1.5
    w = [math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(5)]
    w = [v / sum(w) for v in w]
    out = line_blur(images, radius, sigma, torch.tensor([0.0, 90.0]))
    for c in range(2):
        for y in range(6):
            for x in range(7):
                along_x = sum(w[i] * float(images[0, c, y, min(x + i, 6)]) for i in range(5))  # 0 deg: + columns
                along_y = sum(w[i] * float(images[1, c, min(y + i, 5), x]) for i in range(5))  # 90 deg: + rows
                assert abs(float(out[0, c, y, x]) - along_x) < 1e-5
                assert abs(float(out[1, c, y, x]) - along_y) < 1e-5


def test_line_blur_stops_at_the_first_tap_beyond_the_image():
    images = torch.rand(1, 1, 3, 20, generator=torch.Generator().manual_seed(4))
    out = line_blur(images, 3, 100.0, torch.tensor([90.0]))  # taps 0..6 down the rows; 3 rows: taps 3.. dropped
    weights = torch.exp(-(torch.arange(3.0) ** 2) / 20000.0)
    weights /= weights.sum()  # the 3 kept, renormalised
    by_hand = sum(weights[i] * images[0, 0, [min(y + i, 2) for y in range(3)]] for i in range(3))
    torch.testing.assert_close(out[0, 0], by_hand, rtol=0, atol=1e-6)


def test_local_shuffle_takes_each_inner_pixel_from_its_window():
    h, w, delta = 12, 15, 2
    images = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).repeat(3, 2, 1, 1)
    out = local_shuffle(images, delta, torch.Generator().manual_seed(5))
    torch.testing.assert_close(out[:, 0], out[:, 1], rtol=0, atol=0)  # channels move together
    moved = 0
    for n in range(3):
        for y in range(h):
            for x in range(w):
                src = int(out[n, 0, y, x])
                dy, dx = src // w - y, src % w - x
                if delta < y <= h - delta and delta < x <= w - delta:
                    assert -delta <= dy < delta and -delta <= dx < delta
                    moved += (dy, dx) != (0, 0)
                else:
                    assert (dy, dx) == (0, 0)
    assert moved > 0


def test_zoom_factors_are_numpys_arange_and_clipped_zoom_is_linear_on_a_ramp():
    assert len(arange(1, 1.11, 0.01)) == 12 and abs(arange(1, 1.11, 0.01)[-1] - 1.11) < 1e-9
    assert len(arange(1, 1.31, 0.03)) == 11 and len(arange(1, 1.06, 0.01)) == 7
    ramp = (torch.arange(4.0).view(4, 1) * 10 + torch.arange(6.0).view(1, 6)).view(1, 1, 4, 6)
    # factor 2: crop rows 1..2, columns 1..3 (ceil(6 / 2) = 3 wide), enlarged to 4 x 6 with corners aligned
    expected = (1 + torch.arange(4.0).view(4, 1) / 3) * 10 + (1 + torch.arange(6.0).view(1, 6) * 2 / 5)
    torch.testing.assert_close(clipped_zoom(ramp, 2.0)[0, 0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", SIZES)
def test_snow_only_brightens(size):
    images = textured(3, 3, *size)
    for severity in range(1, 6):
        assert bool((run("snow", images, severity) >= images - 1e-6).all())


@pytest.mark.parametrize("scale, size", (("cifar", (32, 32)), ("imagenet", (70, 90))))
def test_frost_is_the_reference_blend_of_the_image_and_a_layer_in_0_1(scale, size):
    images = textured(3, 3, *size)
    for severity in range(1, 6):
        a, b = FROST[scale][severity - 1]
        out = run("frost", images, severity)
        assert bool((out >= (a * images).clamp(max=1) - 1e-6).all()) and bool((out <= a * images + b + 1e-6).all())
        layer = (out - a * images) / b  # where nothing was clipped, the frost layer itself
        unclipped = out < 1
        assert float(layer[unclipped].mean()) > 0.2 and float(layer[unclipped].std()) > 0.05  # a texture, not a wash


@pytest.mark.parametrize("scale, size", (("cifar", (32, 32)), ("imagenet", (70, 90))))
def test_spatter_water_adds_at_most_its_colour_and_mud_mixes_towards_brown(scale, size):
    images = textured(3, 3, *size)
    mud = torch.tensor([63 / 255, 42 / 255, 20 / 255]).view(1, 3, 1, 1)
    for severity in range(1, 6):
        out = run("spatter", images, severity)
        *_, strength, is_mud = SPATTER[scale][severity - 1]
        if not is_mud:  # x + m * turquoise, m in [0, intensity] with its maximum reached
            added = (out - images).amax(dim=(0, 2, 3))
            assert bool((out >= images - 1e-6).all())
            assert bool((added <= strength * torch.tensor(WATER) + 1e-5).all()) and float(added.max()) > 0
        else:  # x (1 - m) + m brown, m in {0} or [0.8, 1]: between the pixel and brown, channel by channel
            low, high = torch.minimum(images, mud), torch.maximum(images, mud)
            assert bool((out >= low - 1e-6).all()) and bool((out <= high + 1e-6).all())
            moved = (out - images).abs().amax(dim=1)
            assert float(moved.max()) > 0.1  # some mud landed


def test_canny_marks_a_step_once_as_opencv_breaks_ties():
    levels = torch.zeros(1, 1, 6, 10)
    levels[..., 5:] = 200.0  # Sobel magnitude 800 at columns 4 and 5; the first of a tie wins (m > left, m >= right)
    edges = canny(levels, 50, 150)
    expected = torch.zeros(1, 1, 6, 10, dtype=torch.bool)
    expected[..., 4] = True
    assert torch.equal(edges, expected)
    weak = torch.zeros(1, 1, 6, 10)
    weak[..., 5:] = 20.0  # magnitude 80: above 50, below 150, and no strong pixel to connect to
    assert not bool(canny(weak, 50, 150).any())


def test_edge_distance_is_the_brute_force_euclidean_distance_capped_at_20():
    gen = torch.Generator().manual_seed(6)
    edges = torch.rand(2, 1, 30, 45, generator=gen) < 0.004
    edges[1] = False
    edges[1, 0, 29, 44] = True  # one corner edge: distances up to sqrt(29^2 + 44^2) > 20
    ys, xs = torch.meshgrid(torch.arange(30.0), torch.arange(45.0), indexing="ij")
    out = edge_distance(edges)
    for n in range(2):
        points = edges[n, 0].nonzero().float()
        grid = torch.stack([ys.flatten(), xs.flatten()], dim=1)
        brute = torch.cdist(grid, points).min(dim=1).values.clamp(max=20).view(30, 45)
        torch.testing.assert_close(out[n, 0], brute, rtol=0, atol=1e-4)
    assert torch.equal(edge_distance(torch.zeros(1, 1, 4, 4, dtype=torch.bool)), torch.full((1, 1, 4, 4), 20.0))


def test_equalize_hist_is_opencvs_loop():
    levels = torch.tensor([3, 3, 5, 7, 7, 7, 9, 200], dtype=torch.float32).view(1, 1, 2, 4)
    hist = [0] * 256
    for v in levels.flatten().tolist():
        hist[int(v)] += 1
    lowest = next(i for i in range(256) if hist[i])
    scale = 255.0 / (8 - hist[lowest])
    lut, total = [0] * 256, 0
    for i in range(lowest + 1, 256):
        total += hist[i]
        lut[i] = round(total * scale)
    expected = torch.tensor([lut[int(v)] for v in levels.flatten().tolist()], dtype=torch.float32).view(1, 1, 2, 4)
    torch.testing.assert_close(equalize_hist(levels), expected, rtol=0, atol=0)
    flat = torch.full((1, 1, 3, 3), 17.0)
    torch.testing.assert_close(equalize_hist(flat), flat, rtol=0, atol=0)
