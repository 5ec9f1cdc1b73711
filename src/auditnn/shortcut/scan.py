"""Label information in low-level image statistics, before any model: features by family (colour statistics per
grid cell, border strips, corner patches, a colour histogram, image-level properties), each family's cross-validated
accuracy at predicting the label with multinomial logistic regression (linear.py), against chance and a
label-permutation null."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.stream import FolderStore, PixelStore, as_store
from ..errors import AuditError

HISTOGRAM_BINS = 8  # per channel, over [0, 1]
FEATURE_BATCH = 256  # images per read when computing features
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
BORDERS = ("top", "bottom", "left", "right")
FORMATS = ("png", "jpeg", "bmp", "gif", "webp", "tiff", "other")


def check_grid(shape: tuple[int, int, int] | torch.Size, grid: int) -> None:
    """A grid x grid split of (C, H, W) images into equal cells: grid >= 1 and it divides both H and W."""
    _, height, width = shape
    if grid < 1 or height % grid or width % grid:
        raise AuditError(
            f"grid {grid} does not divide the {height}x{width} images; allowed: a grid >= 1 that divides both "
            f"the height and the width (divisors of {height}: {_divisors(height, width)})"
        )


def _divisors(height: int, width: int) -> str:
    return ", ".join(str(d) for d in range(1, min(height, width) + 1) if height % d == 0 and width % d == 0)


def strip_width(height: int, width: int) -> int:
    """Pixels across a border strip and a corner patch's side: an eighth of the shorter side, at least 1."""
    return max(1, min(height, width) // 8)


def region_boxes(height: int, width: int, grid: int) -> dict[str, tuple[int, int, int, int]]:
    """Every region's box (top, bottom, left, right), half-open pixel bounds: 'cell r,c' for each grid cell (row r,
    column c from the top left), 'border <side>' strips and 'corner <corner>' patches strip_width() across."""
    ch, cw = height // grid, width // grid
    boxes = {f"cell {r},{c}": (r * ch, (r + 1) * ch, c * cw, (c + 1) * cw) for r in range(grid) for c in range(grid)}
    s = strip_width(height, width)
    boxes |= {
        "border top": (0, s, 0, width),
        "border bottom": (height - s, height, 0, width),
        "border left": (0, height, 0, s),
        "border right": (0, height, width - s, width),
        "corner top-left": (0, s, 0, s),
        "corner top-right": (0, s, width - s, width),
        "corner bottom-left": (height - s, height, 0, s),
        "corner bottom-right": (height - s, height, width - s, width),
    }
    return boxes


def _mean_std(images: torch.Tensor) -> torch.Tensor:
    """(n, 2C): each channel's mean, then each channel's standard deviation (population), over the pixels."""
    flat = images.flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


def histogram(images: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """(n, C * bins): per channel, the share of pixels in each of `bins` equal bins over [0, 1] (1.0 in the last)."""
    n, c = images.shape[:2]
    index = (images.flatten(2) * bins).long().clamp(0, bins - 1)  # (n, C, P)
    counts = torch.zeros(n, c, bins).scatter_add_(2, index, torch.ones_like(index, dtype=torch.float32))
    return (counts / index.shape[2]).flatten(1)


def _gray(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images[:, 0]
    return (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)


def batch_features(images: torch.Tensor, grid: int) -> dict[str, torch.Tensor]:
    """Pixel families of a batch (n, C, H, W) in [0, 1]: every region of region_boxes (mean and std per channel,
    2C features), 'grid' (every cell's, 2C grid^2), 'histogram' (C x HISTOGRAM_BINS shares) and 'brightness and
    contrast' (the mean and standard deviation of the gray level, 2)."""
    _, c, h, w = images.shape
    families = {name: _mean_std(images[:, :, t:b, x0:x1]) for name, (t, b, x0, x1) in region_boxes(h, w, grid).items()}
    families["grid"] = torch.cat([families[f"cell {r},{q}"] for r in range(grid) for q in range(grid)], dim=1)
    families["histogram"] = histogram(images)
    gray = _gray(images).flatten(1)
    families["brightness and contrast"] = torch.stack([gray.mean(1), gray.std(1, unbiased=False)], dim=1)
    return families


def file_properties(files: list[Path]) -> torch.Tensor:
    """(n, 6 + len(FORMATS)) from each file's header and size, no pixel decoded: width, height, aspect (width /
    height), log2 of the file size in bytes, the JPEG quality estimate (0 for other formats), whether quantization
    tables were found, then a one-hot of the format."""
    from PIL import Image

    rows = []
    for path in files:
        try:
            with Image.open(path) as img:
                width, height = img.size
                fmt = (img.format or "other").lower()
                quality = jpeg_quality(getattr(img, "quantization", None)) if fmt == "jpeg" else None
        except Exception as exc:  # PIL raises many kinds on damaged headers
            raise AuditError(
                f"image '{path}' cannot be read ({type(exc).__name__}: {exc}); remove or replace it"
            ) from None
        size = path.stat().st_size
        onehot = [1.0 if fmt == name else 0.0 for name in FORMATS]
        if fmt not in FORMATS:
            onehot[-1] = 1.0
        rows.append(
            [
                float(width),
                float(height),
                width / height,
                float(torch.tensor(float(max(size, 1))).log2()),
                float(quality or 0.0),
                1.0 if quality is not None else 0.0,
                *onehot,
            ]
        )
    return torch.tensor(rows, dtype=torch.float32).view(len(files), 6 + len(FORMATS))


# The IJG standard luminance quantization table (quality 50), in natural order; PIL reports tables in zigzag order,
# but the estimate below uses the sum, which the order does not change.
_IJG_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51,
    87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


def jpeg_quality(tables: dict[int, list[int]] | None) -> float | None:
    """The IJG quality (1..100) whose scaling of the standard luminance table best explains table 0: the scale is
    sum(table) / sum(standard) in percent, and IJG's mapping is scale = 5000 / q for q < 50, 200 - 2q above. None
    without tables."""
    if not tables or 0 not in tables:
        return None
    scale = 100.0 * sum(tables[0]) / sum(_IJG_LUMINANCE)
    quality = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2
    return float(min(100.0, max(1.0, quality)))


def feature_families(
    images: torch.Tensor | PixelStore, grid: int, *, batch_size: int = FEATURE_BATCH
) -> dict[str, torch.Tensor]:
    """Every family's features (N, F) float32 of images (N, C, H, W) in [0, 1] (a tensor or a store, read batch by
    batch): those of batch_features, and for an image folder (a FolderStore) 'file' (file_properties: size, aspect,
    format, JPEG quality, bytes, from the headers). A grid that does not divide the images is an AuditError."""
    store = as_store(images)
    check_grid(store.shape, grid)
    parts: dict[str, list[torch.Tensor]] = {}
    for _, _, batch in store.batches(batch_size):
        for name, values in batch_features(batch, grid).items():
            parts.setdefault(name, []).append(values)
    if not parts:
        raise AuditError("no images to scan; allowed: at least 2 images of each class")
    families = {name: torch.cat(values) for name, values in parts.items()}
    if isinstance(store, FolderStore):
        families["file"] = file_properties(store.files)
    return families
