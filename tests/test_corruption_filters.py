"""The shared filters of the corruptions, computed a second way by hand."""

import torch

from auditnn.corruptions.filters import depthwise, gaussian_blur, gaussian_kernel1d


def test_gaussian_kernel_matches_the_formula_and_sums_to_one():
    k = gaussian_kernel1d(1.0)
    assert k.numel() == 9  # radius int(4 * 1 + 0.5) = 4
    by_hand = torch.tensor([torch.exp(torch.tensor(-0.5 * x * x)).item() for x in range(-4, 5)])
    torch.testing.assert_close(k, (by_hand / by_hand.sum()).float())


def test_depthwise_reflect_equals_an_explicit_sum():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 5, 6)
    kernel = torch.rand(3, 3)
    out = depthwise(images, kernel)

    def at(c, i, j, n):  # reflect: -1 -> 1, H -> H-2
        h, w = images.shape[-2:]
        i = -i if i < 0 else (2 * (h - 1) - i if i >= h else i)
        j = -j if j < 0 else (2 * (w - 1) - j if j >= w else j)
        return images[n, c, i, j]

    for n in range(2):
        for c in range(3):
            for i in range(5):
                for j in range(6):
                    s = sum(kernel[a, b] * at(c, i + a - 1, j + b - 1, n) for a in range(3) for b in range(3))
                    assert abs(float(out[n, c, i, j]) - float(s)) < 1e-5


def test_gaussian_blur_keeps_a_constant_image_constant_and_falls_back_on_tiny_images():
    flat = torch.full((1, 1, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    tiny = torch.full((1, 3, 3, 3), 0.7)  # radius 8 > side: replicated borders, still constant
    torch.testing.assert_close(gaussian_blur(tiny, 2.0), tiny)
