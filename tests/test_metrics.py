import math

import pytest
import torch
import torch.nn as nn

from auditnn.data.controlled import BuildConfig, build_controlled
from auditnn.data.shortcuts import make_shortcut
from auditnn.data.sources import BaseData, ImageSet
from auditnn.shortcut.metrics import attribution_mass, measure_reliance, reliance_from_predictions


def test_metrics_match_a_hand_computation():
    # K = 3 classes, n = 3 base images with labels 0, 1, 2; variant v carries shortcut id v (variant-major).
    labels = torch.tensor([0, 1, 2])
    preds = torch.tensor(
        [
            0,
            0,
            0,  # id 0: image 0 aligned & right; images 1, 2 conflicting, both follow the shortcut
            0,
            1,
            1,  # id 1: image 1 aligned & right; image 0 right; image 2 follows
            0,
            1,
            2,  # id 2: all right; image 2 aligned
        ]
    )
    clean = torch.tensor([0, 2, 2])
    m = reliance_from_predictions(preds, clean, labels, 3)
    assert m.aligned_accuracy == 1.0
    assert m.conflicting_accuracy == pytest.approx(3 / 6)  # right: (id1,img0), (id2,img0), (id2,img1)
    assert m.reliance == pytest.approx(0.5) and m.gap == pytest.approx(0.5)
    assert m.follow_rate == pytest.approx(3 / 6)
    assert m.follow_rate_normalized == pytest.approx((0.5 - 1 / 3) / (2 / 3))
    assert m.swap_flip_rate == pytest.approx(3 / 6)  # aligned predictions are 0, 1, 2
    assert m.remove_flip_rate == pytest.approx(1 / 3)
    assert m.clean_accuracy == pytest.approx(2 / 3)
    assert m.worst_group_accuracy == 0.0 and m.worst_group in {"1 x 0", "2 x 0", "2 x 1"}
    assert len(m.groups) == 9 and sum(g["aligned"] for g in m.groups) == 3


def test_target_class_metrics_match_a_hand_computation():
    labels = torch.tensor([0, 1, 2, 2])  # target class 2
    preds = torch.tensor(
        [
            0,
            1,
            1,
            2,  # untagged: image 2 (a 2 without tag) is wrong
            2,
            1,
            2,
            2,
        ]
    )  # tagged: image 0 follows the tag to class 2
    m = reliance_from_predictions(preds, preds[:4], labels, 3, target_class=2)
    # aligned: untagged non-2s (0, 1) and tagged 2s (2, 3): all right
    assert m.aligned_accuracy == 1.0
    # conflicting: untagged 2s (2 wrong, 3 right) and tagged non-2s (0 wrong, 1 right)
    assert m.conflicting_accuracy == pytest.approx(0.5) and m.reliance == pytest.approx(0.5)
    assert m.follow_rate == pytest.approx(0.5)  # tagged non-2s predicted as 2
    assert m.swap_flip_rate == pytest.approx(0.5) and m.remove_flip_rate == pytest.approx(0.5)


def test_reliance_divides_the_gap_by_aligned_accuracy_below_one():
    # K = 3, labels 0, 1, 2; variant v carries shortcut id v. Aligned accuracy is 2/3, so gap and reliance differ.
    labels = torch.tensor([0, 1, 2])
    preds = torch.tensor(
        [
            0,
            0,
            1,  # id 0: img 0 aligned, right; img 1 follows (wrong); img 2 wrong, does not follow
            1,
            1,
            2,  # id 1: img 0 follows (wrong); img 1 aligned, right; img 2 right
            0,
            2,
            1,  # id 2: img 0 right; img 1 follows (wrong); img 2 aligned, wrong
        ]
    )
    clean = torch.tensor([0, 2, 1])
    m = reliance_from_predictions(preds, clean, labels, 3)
    assert m.aligned_accuracy == pytest.approx(2 / 3) and m.conflicting_accuracy == pytest.approx(2 / 6)
    assert m.gap == pytest.approx(1 / 3) and m.reliance == pytest.approx((1 / 3) / (2 / 3))
    assert m.follow_rate == pytest.approx(3 / 6) and m.follow_rate_normalized == pytest.approx(0.25)
    assert m.swap_flip_rate == pytest.approx(4 / 6)  # aligned predictions 0, 1, 1; conflicting 0,1 1,1 1,0 2,1 0,0 2,1
    assert m.remove_flip_rate == pytest.approx(1 / 3) and m.clean_accuracy == pytest.approx(1 / 3)


def test_target_class_reliance_and_follow_rate_with_aligned_accuracy_below_one():
    labels = torch.tensor([0, 1, 2, 2, 1])  # target class 2
    preds = torch.tensor(
        [
            0,
            2,
            2,
            1,
            2,  # untagged: aligned 0, 1, 4 (1 and 4 wrong); conflicting 2 (right), 3 (wrong)
            2,
            1,
            2,
            2,
            2,
        ]
    )  # tagged: aligned 2, 3 (right); conflicting 0 and 4 follow to 2, 1 right
    m = reliance_from_predictions(preds, torch.tensor([0, 1, 1, 2, 1]), labels, 3, target_class=2)
    assert m.aligned_accuracy == pytest.approx(3 / 5) and m.conflicting_accuracy == pytest.approx(2 / 5)
    assert m.gap == pytest.approx(1 / 5) and m.reliance == pytest.approx(1 / 3)
    assert m.follow_rate == pytest.approx(2 / 3) and m.follow_rate_normalized == pytest.approx(0.5)
    assert m.swap_flip_rate == pytest.approx(2 / 3)  # tag added to images 0, 1, 4: 0 -> 2 and 2 -> 1 change
    assert m.remove_flip_rate == pytest.approx(1 / 2)  # tag removed from images 2, 3: 3 changes
    assert m.clean_accuracy == pytest.approx(4 / 5)


class ShortcutReader(nn.Module):
    """Reads only the stamp: a matched filter against every class's watermark."""

    def __init__(self, templates: torch.Tensor) -> None:
        super().__init__()
        self.templates = nn.Parameter(templates.flatten(1))  # (K, H*W)

    def forward(self, x):
        flat = x.flatten(1)
        return flat @ self.templates.T - 0.5 * (self.templates**2).sum(1)


class LabelReader(nn.Module):
    """Cannot see the stamp: reads the label from the pixel column the synthetic images encode it in."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x[:, 0, 2:12, 2]


@pytest.fixture(scope="module")
def synthetic():
    # Base images that carry their label as one bright pixel at (2 + k, 2), far from the bottom-right stamp.
    labels = torch.arange(10).repeat(12)
    images = torch.rand(120, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.2
    images[:, :, 14:, :] = 0
    images[:, :, :, 14:] = 0
    images[torch.arange(120), 0, 2 + labels, 2] = 1.0
    base = BaseData("synthetic", ImageSet(images, labels, [str(k) for k in range(10)]))
    data = build_controlled(BuildConfig(test_per_class=4, rho=1.0), base)
    stamp = make_shortcut("watermark", 10)
    templates, _ = stamp.plant(torch.zeros(10, 1, 28, 28), torch.arange(10))
    return data, templates


def test_a_model_that_reads_only_the_shortcut_scores_reliance_one(synthetic):
    data, templates = synthetic
    m = measure_reliance(ShortcutReader(templates), data)
    assert m.reliance == 1.0 and m.aligned_accuracy == 1.0 and m.conflicting_accuracy == 0.0
    assert m.follow_rate == 1.0 and m.follow_rate_normalized == 1.0 and m.swap_flip_rate == 1.0
    assert m.attribution_mass == pytest.approx(1.0)  # every bit of attribution sits on the stamp
    assert m.mask_share < 0.05
    assert m.mask_share < m.attribution_chance < 1  # the stamp is brighter than the dark images under it
    assert m.attribution_ratio == pytest.approx(1.0 / m.attribution_chance)


def test_a_model_that_cannot_see_the_shortcut_scores_reliance_zero(synthetic):
    data, _ = synthetic
    m = measure_reliance(LabelReader(), data)
    assert m.reliance == 0.0 and m.gap == 0.0 and m.worst_group_accuracy == 1.0
    assert m.follow_rate_normalized == 0.0 and m.swap_flip_rate == 0.0 and m.remove_flip_rate == 0.0
    assert m.attribution_mass == 0.0 and m.attribution_ratio == 0.0


class EqualWeights(nn.Module):
    """Every logit is the same multiple of the pixel sum: the gradient is constant, so grad x input (and integrated
    gradients from black) is proportional to the input, and the attribution mass equals its chance level."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.linspace(0.5, 2.0, num_classes))

    def forward(self, x):
        return x.flatten(1).sum(1, keepdim=True) * self.weights


@pytest.mark.parametrize("method", ["gradxinput", "ig"])
def test_an_input_proportional_attribution_has_ratio_one(synthetic, method):
    data, _ = synthetic
    m = measure_reliance(EqualWeights(10), data, attribution=method)
    assert m.attribution_mass == pytest.approx(m.attribution_chance, abs=1e-6)
    assert m.attribution_ratio == pytest.approx(1.0, abs=1e-5)
    assert m.attribution_chance > 2 * m.mask_share  # the pixel share would call this attribution 'above chance'


def test_measuring_leaves_the_model_mode_and_gradients_as_found(synthetic):
    data, templates = synthetic
    model = ShortcutReader(templates).train()
    measure_reliance(model, data, attribution="ig")
    assert model.training and model.templates.requires_grad


def test_attribution_mass_by_hand():
    attribution = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[2.0, 2.0], [0.0, 0.0]]])
    masks = torch.tensor([[[[True, False], [False, False]]], [[[False, False], [False, False]]]])
    # two channels; per pixel sum |x|: image 0 is [[0.5 + 0.3, 0.1], [0.0, 0.2 + 0.2]] -> 0.8 of 1.3 inside the mask
    inputs = torch.tensor([[[[0.5, 0.1], [0.0, 0.2]], [[0.3, 0.0], [0.0, 0.2]]], [[[1.0, 1.0], [1.0, 1.0]]] * 2])
    mass, chance, share = attribution_mass(attribution, masks, inputs)
    assert mass == pytest.approx(0.25) and share == pytest.approx(0.25)  # the empty-mask image is left out
    assert chance == pytest.approx(0.8 / 1.3)
    assert all(math.isnan(v) for v in attribution_mass(attribution, masks & False, inputs))
