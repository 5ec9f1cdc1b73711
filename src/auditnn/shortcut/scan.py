"""Label information in low-level image statistics, before any model: features by family (colour statistics per
grid cell, border strips, corner patches, a colour histogram, image-level properties), each family's cross-validated
accuracy at predicting the label with multinomial logistic regression (linear.py), against chance and a
label-permutation null."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.stream import FolderStore, PixelStore, as_store
from ..errors import AuditError
from ..linear import fit_logistic, predict_logits, standardize

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


# ---------------------------------------------------------------- the scan

L2 = 0.1  # the classifiers' ridge penalty on standardized features (keeps separable families finite, fits fast)
FIT_ITER = 100  # proximal steps per fit: the observed and the null fits take the same, so the test stays exact
FIT_TOL = 1e-3
PROBLEM_ELEMENTS = 1 << 24  # R x G x N x K logits per solve at most (the permutations are solved in chunks)
EXEMPLARS = 4  # images per class for the strongest region


@dataclass
class FamilyScore:
    """One family's (or region's) test. accuracy: cross-validated share of images whose label the family's classifier
    predicts; lift: accuracy - chance; p_value: its label-permutation p-value, (1 + #null lifts >= lift) / (1 + P);
    adjusted_p: the family-wise one, against the largest null lift over every family in each permutation; region:
    True for grid cells, border strips and corner patches (their box in pixels: top, bottom, left, right)."""

    name: str
    features: int
    accuracy: float
    lift: float
    p_value: float
    adjusted_p: float
    flagged: bool
    region: bool
    box: tuple[int, int, int, int] | None = None


@dataclass
class ScanResult:
    """What a scan found. chance: the majority class's share; scores: one per family, ranked by lift (strongest
    first); heat: lift per grid cell (grid, grid); exemplars: per class, indices (into the scanned images) of the
    images the strongest region's classifier puts most surely in their own class (up to EXEMPLARS)."""

    n: int
    num_classes: int
    grid: int
    folds: int
    permutations: int
    alpha: float
    seed: int
    chance: float
    scores: list[FamilyScore]
    heat: torch.Tensor
    strongest_region: str
    exemplars: list[list[int]] = field(default_factory=list)

    @property
    def flagged(self) -> list[FamilyScore]:
        return [s for s in self.scores if s.flagged]

    def max_lift(self, region: bool) -> float:
        """The largest lift among regions (True) or the other families (False)."""
        return max((s.lift for s in self.scores if s.region == region), default=0.0)


def check_scan_settings(folds: int, permutations: int, alpha: float) -> None:
    """What a scan refuses before reading data: fewer than 2 folds, an alpha outside (0, 1), and too few
    permutations to reach alpha (the smallest permutation p-value is 1 / (1 + P) and a flag needs p < alpha, so
    P > 1 / alpha - 1: at alpha 0.01, at least 100)."""
    if folds < 2:
        raise AuditError(f"folds {folds}; allowed: at least 2")
    if not 0 < alpha < 1:
        raise AuditError(f"alpha {alpha}; allowed: 0 < alpha < 1")
    needed = math.floor(1 / alpha - 1 + 1e-9) + 1
    if permutations < needed:
        raise AuditError(
            f"permutations {permutations} cannot reach alpha {alpha:g}: the smallest p-value is 1 / (1 + permutations) "
            f"= {1 / (1 + permutations):.3g} and a flag needs p < alpha; allowed: permutations >= {needed}"
        )


def check_scan_input(labels: torch.Tensor, num_classes: int, folds: int, permutations: int, alpha: float) -> None:
    """check_scan_settings, then the labels: (N,) class indices, at least 2 images of every class, and no more
    folds than the smallest class has images."""
    check_scan_settings(folds, permutations, alpha)
    if labels is None or labels.dim() != 1 or labels.numel() == 0:
        raise AuditError("the data has no labels; allowed: labelled images (one class index per image)")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise AuditError(f"labels fall outside [0, {num_classes}); allowed: 0 .. K-1")
    counts = torch.bincount(labels, minlength=num_classes)
    smallest = int(counts.argmin())
    if int(counts[smallest]) < 2:
        raise AuditError(
            f"class {smallest} has {int(counts[smallest])} image(s); allowed: at least 2 images of every class "
            "(a cross-validated accuracy needs one to fit on and one to test)"
        )
    if folds > int(counts[smallest]):
        raise AuditError(
            f"folds {folds}; allowed: 2 .. {int(counts[smallest])} (the smallest class's images, class {smallest})"
        )


def stratified_folds(labels: torch.Tensor, folds: int, generator: torch.Generator) -> torch.Tensor:
    """(N,) fold of each image: each class's images in a random order dealt to the folds in turn, continuing where the
    previous class stopped, so every fold holds each class's share within one image and the sizes differ by one."""
    fold = torch.empty_like(labels)
    dealt = 0
    for k in range(int(labels.max()) + 1):
        members = (labels == k).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        fold[members] = (torch.arange(len(members)) + dealt) % folds
        dealt += len(members)
    return fold


def _fold_standardized(features: torch.Tensor, fold: torch.Tensor, folds: int) -> torch.Tensor:
    """(folds, N, F): the features standardized by each fold's training rows (linear.standardize)."""
    return torch.stack([standardize(features[fold != f], features)[1] for f in range(folds)])


def _correct_counts(
    features: torch.Tensor, labels: torch.Tensor, fold: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-validated correct predictions of M families of the same width, features (M, N, D), for each set of
    labels (R, N): (R, M) counts, and the first set's held-out probabilities (M, N, K) (each image's from the fold
    that held it out). Every family x fold is one problem of one batched fit (linear.fit_logistic)."""
    families, n, width = features.shape
    folds = int(fold.max()) + 1
    x = torch.stack([_fold_standardized(f.float(), fold, folds) for f in features]).view(families * folds, n, width)
    held_out = torch.nn.functional.one_hot(fold, folds).T.bool()  # (folds, N): the test rows of each fold
    weight = (~held_out).float().repeat(families, 1)
    fit = fit_logistic(
        x, labels.unsqueeze(1).expand(-1, families * folds, -1), num_classes, l2=L2, sample_weight=weight,
        max_iter=FIT_ITER, tol=FIT_TOL,
    )  # fmt: skip
    logits = predict_logits(fit, x).view(len(labels), families, folds, n, num_classes)
    chosen = (logits.argmax(-1) == labels.view(-1, 1, 1, n)) & held_out  # (R, M, folds, N)
    probabilities = (torch.softmax(logits[0], -1) * held_out.unsqueeze(-1)).sum(1)
    return chosen.sum((2, 3)), probabilities


def _all_correct(
    features: torch.Tensor, label_sets: torch.Tensor, fold: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """_correct_counts over label_sets (1 + P, N), solved in chunks of at most PROBLEM_ELEMENTS logits."""
    folds, n = int(fold.max()) + 1, label_sets.shape[1]
    chunk = max(1, PROBLEM_ELEMENTS // (len(features) * folds * n * max(num_classes, features.shape[2])))
    counts, probabilities = [], torch.zeros(0)
    for start in range(0, len(label_sets), chunk):
        part, probs = _correct_counts(features, label_sets[start : start + chunk], fold, num_classes)
        counts.append(part)
        if start == 0:
            probabilities = probs
    return torch.cat(counts), probabilities


def scan(
    images: torch.Tensor | PixelStore,
    labels: torch.Tensor,
    num_classes: int,
    *,
    grid: int = 4,
    folds: int = 5,
    permutations: int = 199,
    alpha: float = 0.01,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> ScanResult:
    """Which families of low-level statistics predict the label. For each family of feature_families: the
    cross-validated accuracy (stratified folds) of multinomial logistic regression on its standardized features (l2
    L2), its lift over chance (the majority class's share), and a label-permutation test: the same folds, the labels
    permuted P times (one permutation shared by every family), p = (1 + #null lifts >= lift) / (1 + P); the
    family-wise adjusted p compares each lift with the largest null lift over all families of each permutation
    (max-statistic, Westfall and Young), so a flag (adjusted p < alpha) is a family-wise error-controlled finding."""
    store = as_store(images)
    check_scan_input(labels, num_classes, folds, permutations, alpha)
    if len(store) != len(labels):
        raise AuditError(f"{len(store)} images and {len(labels)} labels; allowed: one label per image")
    families = feature_families(store, grid)
    generator = torch.Generator().manual_seed(seed)
    fold = stratified_folds(labels, folds, generator)
    label_sets = torch.stack(
        [labels, *(labels[torch.randperm(len(labels), generator=generator)] for _ in range(permutations))]
    )
    n = len(labels)
    chance = float(torch.bincount(labels, minlength=num_classes).max()) / n
    by_width: dict[int, list[str]] = {}  # families of one width are solved together (one batched fit)
    for name, values in families.items():
        by_width.setdefault(int(values.shape[1]), []).append(name)
    lifts, probabilities = {}, {}
    for i, names in enumerate(by_width.values()):
        if progress is not None:
            progress(", ".join(names) if len(names) < 3 else f"{len(names)} families", i, len(by_width))
        correct, probs = _all_correct(torch.stack([families[k] for k in names]), label_sets, fold, num_classes)
        for j, name in enumerate(names):
            lifts[name], probabilities[name] = correct[:, j].double() / n - chance, probs[j]  # (1 + P,), (N, K)
    lifts = {name: lifts[name] for name in families}  # in the families' order
    table = torch.stack(list(lifts.values()))  # (families, 1 + P)
    observed, null = table[:, 0], table[:, 1:]
    largest = null.max(dim=0).values
    boxes = region_boxes(*store.shape[1:], grid)
    scores = []
    for j, name in enumerate(lifts):
        raw = (1 + int((null[j] >= observed[j] - 1e-12).sum())) / (1 + permutations)
        adjusted = (1 + int((largest >= observed[j] - 1e-12).sum())) / (1 + permutations)
        scores.append(
            FamilyScore(
                name, int(families[name].shape[1]), float(observed[j] + chance), float(observed[j]), raw, adjusted,
                adjusted < alpha, name in boxes, boxes.get(name),
            )
        )  # fmt: skip
    scores.sort(key=lambda s: (-s.lift, s.name))
    heat = torch.tensor([[float(lifts[f"cell {r},{c}"][0]) for c in range(grid)] for r in range(grid)])
    strongest = next(s.name for s in scores if s.region)
    return ScanResult(
        n, num_classes, grid, folds, permutations, alpha, seed, chance, scores, heat, strongest,
        exemplars(probabilities[strongest], labels, num_classes),
    )  # fmt: skip


def exemplars(probabilities: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[list[int]]:
    """Per class, up to EXEMPLARS indices of its images with the highest held-out probability of their own class."""
    own = probabilities.gather(1, labels.unsqueeze(1)).squeeze(1)
    picked = []
    for k in range(num_classes):
        members = (labels == k).nonzero().flatten()
        order = own[members].argsort(descending=True, stable=True)
        picked.append(members[order[:EXEMPLARS]].tolist())
    return picked
