"""Deep Feature Reweighting: balanced subsamples counted by hand, the retrained layer recomputed a second way, and
a synthetic problem where one feature is spurious, which DFR must stop following."""

import pytest
import torch
import torch.nn as nn

from auditnn.errors import AuditError
from auditnn.linear import fit_logistic, standardize
from auditnn.models.features import embed
from auditnn.shortcut.dfr import (
    L1_GRID,
    PAPER_C,
    balanced_subsample,
    fit_dfr,
    retrain_last_layer,
    tuning_halves,
    worst_group_accuracy,
)

CPU = torch.device("cpu")


def test_a_balanced_subsample_takes_the_smallest_groups_count_from_every_group():
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])  # counts by hand: 3, 2, 4 -> 2 of each
    picked = balanced_subsample(groups, 3, torch.Generator().manual_seed(0))
    assert len(picked) == 6 and len(set(picked.tolist())) == 6
    assert groups[picked].tolist() == [0, 0, 1, 1, 2, 2]
    assert sorted(picked[2:4].tolist()) == [3, 4]  # group 1 is the smallest: all of it
    other = balanced_subsample(groups, 3, torch.Generator().manual_seed(1))
    again = balanced_subsample(groups, 3, torch.Generator().manual_seed(0))
    assert torch.equal(picked, again) and groups[other].tolist() == [0, 0, 1, 1, 2, 2]


def test_the_tuning_halves_split_every_group_and_cover_it_once():
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    fit, score = tuning_halves(groups, 3, torch.Generator().manual_seed(0))
    # ceil(n / 2) to fit on: 2, 1, 2; the rest, 1, 1, 2, to score
    assert torch.bincount(groups[fit]).tolist() == [2, 1, 2] and torch.bincount(groups[score]).tolist() == [1, 1, 2]
    assert sorted(torch.cat([fit, score]).tolist()) == list(range(9))


def test_the_l1_grid_is_the_papers_c_grid_inverted():
    assert L1_GRID == pytest.approx([1, 1 / 0.7, 1 / 0.3, 10, 1 / 0.07, 1 / 0.03, 100])
    assert len(PAPER_C) == 7


def spurious_images(n_per_group, seed, *, aligned_share=None):
    """(images (N, 1, 2, 2), labels, groups) whose four pixels are: a core pixel, lit by the label with noise 0.1
    (0.3 or 0.7), a spurious pixel set by the attribute a almost without noise (0.2 or 0.8), and two noise pixels.
    Group = 2 * label + a. n_per_group: images per group (label, a) in order 00, 01, 10, 11."""
    g = torch.Generator().manual_seed(seed)
    labels, attrs = [], []
    for (y, a), n in zip([(0, 0), (0, 1), (1, 0), (1, 1)], n_per_group, strict=True):
        labels += [y] * n
        attrs += [a] * n
    y, a = torch.tensor(labels), torch.tensor(attrs)
    n = len(y)
    core = 0.3 + 0.4 * y + 0.1 * torch.randn(n, generator=g)
    spurious = 0.2 + 0.6 * a + 0.02 * torch.randn(n, generator=g)
    noise = 0.5 + 0.1 * torch.randn(n, 2, generator=g)
    images = torch.stack([core, spurious, noise[:, 0], noise[:, 1]], dim=1).clamp(0, 1).view(n, 1, 2, 2)
    return images, y, 2 * y + a


def erm_model(seed=0):
    """Flatten + Linear(4, 2) fitted on training data where the attribute agrees with the label 95 % of the time:
    the spurious pixel, cleaner than the core one, carries it."""
    images, labels, _ = spurious_images([190, 10, 10, 190], seed)
    fit = fit_logistic(images.view(len(images), -1), labels, 2, l2=1e-2, max_iter=2000)  # weight decay
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(fit.weight)
        model[1].bias.copy_(fit.bias)
    return model


def group_accuracies(model, images, labels, groups):
    with torch.no_grad():
        right = model(images).argmax(1) == labels
    return [float(right[groups == k].float().mean()) for k in range(4)]


def test_dfr_stops_following_a_spurious_feature_and_lifts_the_worst_group():
    model = erm_model()
    held_out = spurious_images([60, 8, 8, 60], 1)  # imbalanced: DFR balances it to 8 per group
    test = spurious_images([100, 100, 100, 100], 2)
    before = group_accuracies(model, *test)
    new, result = retrain_last_layer(model, *held_out, num_classes=2, seed=0, batch_size=64, device=CPU)
    after = group_accuracies(new, *test)
    assert min(before) < 0.3  # ERM calls the conflicting groups by the attribute
    assert min(after) > 0.85 and min(after) > min(before) + 0.5
    assert result.layer == "1" and result.per_group == 8 and result.group_counts == [60, 8, 8, 60]
    assert result.groups == 4 and result.n == 136 and result.ensemble == 10 and result.converged
    assert [row["l1"] for row in result.tuning] == list(L1_GRID) and result.l1 in L1_GRID
    # The new layer weighs the core pixel (0) more than the spurious one (1); the model itself is unchanged.
    weight = new[1].weight
    assert (weight[1, 0] - weight[0, 0]).abs() > (weight[1, 1] - weight[0, 1]).abs()
    assert group_accuracies(model, *test) == before and new[1] is not model[1]


def test_the_new_models_logits_are_its_features_times_the_new_weight_plus_bias():
    model = erm_model()
    images, labels, groups = spurious_images([20, 6, 6, 20], 3)
    new, _ = retrain_last_layer(model, images, labels, groups, num_classes=2, seed=4, batch_size=7, device=CPU)
    test = spurious_images([5, 5, 5, 5], 5)[0]
    features = embed(model, test, batch_size=3)
    assert torch.allclose(features, test.view(len(test), -1))  # the classifier's input: the flattened pixels
    expected = features.double() @ new[1].weight.double().T + new[1].bias.double()
    with torch.no_grad():
        assert torch.allclose(new(test).double(), expected, atol=1e-5)


def test_the_unstandardized_layer_gives_the_logits_of_standardizing_then_applying_the_fit():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(80, 6, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5, 0.1, 2, 1, 3]) + 4
    features[:, 5] = 2.5  # a constant feature: unscaled, it stays at 0 after centring
    labels = (features[:, 0] + 0.3 * torch.randn(80, generator=g, dtype=torch.float64) > 4).long()
    groups = 2 * labels + (torch.arange(80) % 2)
    fit = fit_dfr(features, labels, groups, num_classes=2, seed=0, ensemble=3)
    other = torch.randn(10, 6, generator=g, dtype=torch.float64) + 4
    _, standardized = standardize(features, other)  # the scan branch's standardization, a second implementation
    second = standardized @ fit.std_weight.T + fit.std_bias
    assert torch.allclose(other @ fit.weight.T + fit.bias, second, atol=1e-10)
    # The chosen l1 is the grid value with the best tuning worst-group accuracy, the first of equals.
    best = max(row["worst_group_accuracy"] for row in fit.result.tuning)
    assert fit.result.l1 == next(row["l1"] for row in fit.result.tuning if row["worst_group_accuracy"] == best)


def test_the_same_seed_gives_the_same_layer_and_another_seed_another():
    features = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    labels = (features[:, 0] > 0).long()
    groups = 2 * labels + (features[:, 1] > 0).long()
    one, two = (fit_dfr(features, labels, groups, num_classes=2, seed=7, ensemble=2) for _ in range(2))
    three = fit_dfr(features, labels, groups, num_classes=2, seed=8, ensemble=2)
    assert torch.equal(one.weight, two.weight) and not torch.equal(one.weight, three.weight)


def test_worst_group_accuracy_by_hand():
    logits = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1], [1, 0]])  # predicts 0, 1, 0, 1, 0
    labels = torch.tensor([0, 1, 1, 1, 0])
    groups = torch.tensor([0, 0, 1, 1, 3])  # group 0: 2/2, group 1: 1/2, group 2 absent, group 3: 1/1
    assert worst_group_accuracy(logits, labels, groups, 4) == 0.5


def test_a_group_too_small_to_tune_on_is_refused_with_its_count_and_what_is_needed():
    features = torch.randn(7, 3)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    groups = torch.tensor([0, 0, 0, 1, 2, 2, 2])
    with pytest.raises(AuditError, match=r"group 1 has 1 image to retrain on; DFR needs at least 2 per group"):
        fit_dfr(features, labels, groups, num_classes=2, seed=0)
    names = ["cat x indoor", "dog x indoor", "dog x outdoor"]
    with pytest.raises(AuditError, match=r"group 'dog x indoor' has 1 image"):
        fit_dfr(features, labels, groups, num_classes=2, seed=0, group_names=names)
    with pytest.raises(AuditError, match=r"group 1 has 0 images"):
        fit_dfr(features, labels, torch.tensor([0, 0, 0, 2, 2, 2, 2]), num_classes=2, seed=0)
    with pytest.raises(AuditError, match=r"l1 grid \[0.0\]; allowed: one or more numbers > 0"):
        fit_dfr(features, labels, groups, num_classes=2, seed=0, l1_grid=(0.0,))


def test_a_model_without_a_linear_classifier_is_refused_by_name():
    model = nn.Sequential(nn.Flatten(), nn.Conv1d(1, 2, 1))  # no nn.Linear anywhere
    images = torch.rand(4, 1, 1, 1)
    with pytest.raises(AuditError, match="has no nn.Linear layer with 2 outputs"):
        retrain_last_layer(
            model,
            images,
            torch.tensor([0, 1, 0, 1]),
            torch.tensor([0, 1, 0, 1]),
            num_classes=2,
            seed=0,
            batch_size=4,
            device=CPU,
        )
