"""Pictures for the HTML report, drawn with matplotlib and returned as PNG bytes. Pure functions of their inputs."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _plain(text: str) -> str:
    """Text drawn literally: matplotlib reads a pair of '$' as mathtext (and fails on malformed TeX)."""
    return text.replace("$", r"\$")


def _png(fig) -> bytes:  # noqa: ANN001
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _show(ax, image: torch.Tensor) -> None:  # noqa: ANN001
    """(C, H, W) in [0, 1] onto an axis, gray for one channel."""
    image = image.detach().float().clamp(0, 1)
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(
    rows: Sequence[tuple[str, torch.Tensor, Sequence[str]]], overlays: dict[int, torch.Tensor] | None = None
) -> bytes:
    """One row per (title, images (N, C, H, W), captions). overlays[row] = heat maps (N, H, W) drawn over that row."""
    cols = max(len(images) for _, images, _ in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.4 * cols, 1.6 * len(rows)), squeeze=False)
    for r, (title, images, captions) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(images):
                ax.axis("off")
                continue
            _show(ax, images[c])
            if overlays and r in overlays:
                heat = overlays[r][c].float()
                scaled = (heat / heat.max().clamp(min=1e-12)).numpy()
                ax.imshow(scaled, cmap="inferno", alpha=0.6, interpolation="nearest")
            ax.set_title(_plain(captions[c]), fontsize=7)
        axes[r][0].set_ylabel(_plain(title), fontsize=8)
    return _png(fig)


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, title: str
) -> bytes:
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=_plain(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(_plain(title), fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def weight_grid(weights: torch.Tensor, title: str) -> bytes:
    """First-layer weights (N, C, h, w) as a grid of images, each scaled symmetrically around zero."""
    n = len(weights)
    cols = min(10, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 * cols, 0.9 * rows + 0.4), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        ax.axis("off")
        if i < n:
            w = weights[i].float()
            picture = w.mean(0) if w.shape[0] != 3 else w.permute(1, 2, 0)
            scale = float(w.abs().max()) or 1.0
            if picture.dim() == 2:
                ax.imshow(picture.numpy(), cmap="coolwarm", vmin=-scale, vmax=scale, interpolation="nearest")
            else:
                ax.imshow((picture / (2 * scale) + 0.5).clamp(0, 1).numpy(), interpolation="nearest")
    fig.suptitle(_plain(title), fontsize=9)
    return _png(fig)
