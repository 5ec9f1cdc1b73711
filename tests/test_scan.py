"""shortcut/scan: the features by hand, the cross-validated accuracy a second way (one fit per fold), the permutation
p-values against their definition, the planted targets on small controlled datasets, and the bad inputs."""

from __future__ import annotations

import functools

import pytest
import torch

from auditnn.data.controlled import BuildConfig, ShortcutConfig, build_controlled
from auditnn.errors import AuditError
from auditnn.linear import fit_logistic, predict_logits, standardize
from auditnn.shortcut import scan as scan_module
from auditnn.shortcut.scan import (
    ScanResult,
    batch_features,
    check_scan_input,
    feature_families,
    histogram,
    jpeg_quality,
    region_boxes,
    scan,
    stratified_folds,
)

CLASSES = 4  # planted data: the first four digit classes, 40 training images each (fast, and still a real test)


def test_region_features_by_hand() -> None:
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, :4, :4] = 1.0  # the top-left quarter white
    image[0, 0, 7, 7] = 0.5
    families = batch_features(image, 2)
    assert torch.equal(families["cell 0,0"], torch.tensor([[1.0, 0.0]]))  # mean 1, std 0
    assert families["cell 1,1"][0, 0] == pytest.approx(0.5 / 16)
    assert families["cell 1,1"][0, 1] == pytest.approx(((0.5 / 16) * (1 - 1 / 16) * 0.5) ** 0.5)  # sqrt(E[x^2]-m^2)
    assert region_boxes(8, 8, 2)["corner bottom-right"] == (7, 8, 7, 8)  # an eighth of the side: 1 pixel
    assert torch.equal(families["corner bottom-right"], torch.tensor([[0.5, 0.0]]))
    assert torch.equal(families["border top"], torch.tensor([[0.5, 0.5]]))  # half of row 0 is white
    assert families["grid"].shape == (1, 8)
    assert torch.allclose(families["brightness and contrast"][0, 0], image.mean())
    # 16 pixels at 1.0 (last bin), one at 0.5 (bin 4 of 8), 47 at 0.
    assert torch.equal(histogram(image)[0], torch.tensor([47, 0, 0, 0, 1, 0, 0, 16]) / 64)


def test_features_batch_by_batch_equal_all_at_once() -> None:
    images = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    small = feature_families(images, 4, batch_size=3)
    whole = batch_features(images, 4)
    assert small.keys() == whole.keys()
    for name in whole:
        assert torch.allclose(small[name], whole[name])


def test_jpeg_quality_estimate_matches_what_pil_wrote(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    from PIL import Image

    for quality in (30, 75, 95):
        path = tmp_path / f"q{quality}.jpg"
        Image.new("RGB", (16, 16), (120, 30, 200)).save(path, quality=quality)
        with Image.open(path) as img:
            assert jpeg_quality(img.quantization) == pytest.approx(quality, abs=2)


def test_stratified_folds_spread_every_class() -> None:
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    fold = stratified_folds(labels, 3, torch.Generator().manual_seed(0))
    for k in range(3):
        counts = torch.bincount(fold[labels == k], minlength=3)
        assert int(counts.max() - counts.min()) <= 1
    assert int(torch.bincount(fold).max() - torch.bincount(fold).min()) <= 1


def test_cross_validated_accuracy_recomputed_fold_by_fold() -> None:
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(60) % 3
    features = torch.randn(60, 2, generator=generator) + labels.unsqueeze(1).float()
    fold = stratified_folds(labels, 3, generator)
    counts, _ = scan_module._all_correct(torch.stack([features, -features]), labels.unsqueeze(0), fold, 3)
    correct = 0
    for f in range(3):  # a second way: each fold's classifier fitted on its own training rows only
        train, test = standardize(features[fold != f], features[fold == f])
        fit = fit_logistic(train, labels[fold != f], 3, l2=scan_module.L2, max_iter=5000, tol=1e-9)
        correct += int((predict_logits(fit, test).argmax(1) == labels[fold == f]).sum())
    # The scan stops at a looser tolerance: a point may sit on the fence. Negated features: the same classifier.
    assert abs(int(counts[0, 0]) - correct) <= 1 and abs(int(counts[0, 1]) - correct) <= 1
    assert correct > 30  # far above chance (20): the comparison is not between two zeros


@functools.cache
def _scanned(tag: str, rho: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, ScanResult, torch.Tensor]:
    """(images, labels, scan result, the shortcut's pixels: the union of its masks (H, W)) of small planted data."""
    ds = build_controlled(BuildConfig(shortcut=ShortcutConfig(tag=tag), rho=rho, seed=seed))
    keep = torch.cat([(ds.train.labels == k).nonzero().flatten()[:40] for k in range(CLASSES)])
    images, labels = ds.train.images[keep], ds.train.labels[keep]
    result = scan(images, labels, CLASSES, grid=4, folds=3, permutations=100, seed=seed)
    return images, labels, result, ds.train.masks[keep].any(0)[0]


def test_p_values_follow_their_definition() -> None:
    _, _, result, _ = _scanned("watermark", 0.95)
    lifts = {s.name: s.lift for s in result.scores}
    assert result.chance == pytest.approx(0.25)
    for s in result.scores:
        assert s.lift == pytest.approx(s.accuracy - 0.25)
        assert 1 / 101 <= s.p_value <= s.adjusted_p <= 1  # the max over families is at least each family's own null
        assert s.flagged == (s.adjusted_p < 0.01)
    best = result.scores[0]
    assert best.p_value == pytest.approx(1 / 101) and best.adjusted_p == pytest.approx(1 / 101)
    assert result.heat.shape == (4, 4)
    assert float(result.heat[3, 3]) == pytest.approx(lifts["cell 3,3"])
    assert result.max_lift(True) == max(s.lift for s in result.scores if s.region)


def _inside_share(box: tuple[int, int, int, int], shortcut: torch.Tensor) -> float:
    """The share of a region's pixels inside the bounding box of the shortcut's pixels."""
    rows, cols = shortcut.any(1).nonzero().flatten(), shortcut.any(0).nonzero().flatten()
    top, bottom, left, right = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    t, b, x0, x1 = box
    inside = max(0, min(b, bottom) - max(t, top)) * max(0, min(x1, right) - max(x0, left))
    return inside / ((b - t) * (x1 - x0))


@pytest.mark.parametrize("tag", ["watermark", "boat"])
def test_a_planted_stamp_is_found_where_it_sits(tag: str) -> None:
    # The strongest region lies mostly (at least a quarter of its pixels) where the stamp or pictogram is planted:
    # the watermark's corner cell, the boat's cells at the top left; and it is flagged family-wise.
    _, labels, result, shortcut = _scanned(tag, 0.95)
    strongest = next(s for s in result.scores if s.name == result.strongest_region)
    assert strongest.box is not None and _inside_share(strongest.box, shortcut) >= 0.25, [
        (s.name, round(s.lift, 3)) for s in result.scores
    ]
    assert strongest.adjusted_p < 0.01 and strongest.flagged
    assert len(result.exemplars) == CLASSES and all(len(e) == 4 for e in result.exemplars)
    assert all(int(labels[i]) == k for k, e in enumerate(result.exemplars) for i in e)


def test_a_planted_background_is_found_in_the_border() -> None:
    # The ground is everywhere the digit is not; the border strips are pure ground: one of them is among the
    # strongest regions (no region carries more label information), flagged family-wise.
    _, _, result, _ = _scanned("background", 0.95)
    regions = [s for s in result.scores if s.region]
    borders = [s for s in regions if s.name.startswith("border")]
    assert max(s.lift for s in borders) == max(s.lift for s in regions)
    assert all(s.flagged for s in borders) and max(s.lift for s in borders) > 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_labels_independent_of_the_images_are_not_flagged(seed: int) -> None:
    # The null hypothesis true for every family at once: the family-wise error is below alpha (0.01) per seed.
    images, _, _, _ = _scanned("watermark", 0.95)
    labels = torch.arange(len(images)) % CLASSES
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(100 + seed))]
    result = scan(images, labels, CLASSES, grid=4, folds=3, permutations=100, seed=seed)
    assert result.flagged == []


@pytest.mark.parametrize("seed", [0, 1])
def test_control_shortcut_place_is_not_flagged(seed: int) -> None:
    # rho = 1/K: the tag is planted independently of the label, so the corner it occupies carries no label
    # information (the digit itself still does: see the README on what a control shows).
    _, _, result, _ = _scanned("watermark", 1 / 10, seed)
    flagged = {s.name for s in result.flagged}
    assert not flagged & {"cell 3,3", "corner bottom-right", "border bottom", "border right"}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"labels": torch.tensor([0, 0, 1])}, "class 1 has 1 image(s)"),
        ({"permutations": 19}, "permutations 19 cannot reach alpha 0.01"),
        ({"permutations": 99}, "allowed: permutations >= 100"),
        ({"alpha": 0.0}, "alpha 0.0"),
        ({"folds": 3}, "folds 3; allowed: 2 .. 2"),
        ({"labels": torch.zeros(0, dtype=torch.int64)}, "the data has no labels"),
    ],
)
def test_bad_scan_input_is_refused(change: dict, needle: str) -> None:  # noqa: ANN001
    given = {"labels": torch.tensor([0, 0, 1, 1]), "num_classes": 2, "folds": 2, "permutations": 100, "alpha": 0.01}
    given.update(change)
    with pytest.raises(AuditError) as info:
        check_scan_input(**given)
    assert needle in str(info.value)


def test_grid_that_does_not_divide_the_images_is_refused() -> None:
    with pytest.raises(AuditError, match="grid 5 does not divide the 28x28 images"):
        feature_families(torch.zeros(2, 1, 28, 28), 5)


def test_an_image_folder_adds_the_files_properties_from_their_headers(tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    from auditnn.data.sources import load_imagefolder
    from auditnn.shortcut.scan import FORMATS

    for cls, fmt, suffix in (("a", "PNG", "png"), ("b", "JPEG", "jpg")):
        (tmp_path / cls).mkdir()
        for i, size in enumerate(((16, 8), (12, 12))):
            Image.new("RGB", size, (200, 10 * i, 30)).save(tmp_path / cls / f"{i}.{suffix}", fmt, quality=60)
    images, _ = load_imagefolder(tmp_path)
    files = feature_families(images.store, 4)["file"]
    assert files.shape == (4, 6 + len(FORMATS))
    for row, path in zip(files.tolist(), images.store.files, strict=True):
        with Image.open(path) as img:
            width, height = img.size
        assert row[:3] == pytest.approx([width, height, width / height])
        assert row[3] == pytest.approx(torch.tensor(float(path.stat().st_size)).log2().item())
        jpeg = path.suffix == ".jpg"
        assert row[4] == (pytest.approx(60, abs=2) if jpeg else 0.0) and row[5] == float(jpeg)
        assert row[6 + FORMATS.index("jpeg" if jpeg else "png")] == 1.0 and sum(row[6:]) == 1.0
