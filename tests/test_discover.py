"""shortcut/discover.py: every figure a slice carries, recomputed a second way (published intervals, hand counts,
torch.distributions, an analytic grid), and the mixture finding a planted failing slice that spans classes."""

import math

import pytest
import torch

from auditnn.errors import AuditError
from auditnn.shortcut.discover import (
    atypicality,
    cell_shares,
    component_log_likelihood,
    difference_interval,
    dimension_weights,
    distinguishing_features,
    distinguishing_regions,
    find_slices,
    fit_mixture,
    gap_interval,
    reduce_embeddings,
    score_against,
    wilson,
    within_class_differences,
)


def test_wilson_and_newcombe_match_the_published_figures():
    # Wilson 0/10: upper 0.2775; Newcombe (1998) table II, 56/70 - 48/80, method 10: 0.0524 to 0.3339
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = difference_interval(56 / 70, 70, 48 / 80, 80)
    assert (low, high) == (pytest.approx(0.0524, abs=1e-4), pytest.approx(0.3339, abs=1e-4))


def test_the_gap_is_the_class_weighted_rest_minus_the_slice_counted_by_hand():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
    correct = torch.tensor([0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    members = torch.tensor([0, 4, 8])  # one class-0 image, two class-1 images; class 2 absent
    rest, gap, low, high = gap_interval(correct, labels, members, 3)
    # rest of class 0: images 1, 2, 3 -> 2/3; rest of class 1: images 5, 6, 7 -> 3/3; weights 1/3, 2/3
    assert rest == pytest.approx(1 / 3 * 2 / 3 + 2 / 3 * 1.0)
    assert gap == pytest.approx(rest - 0.0)
    effective = 1 / ((1 / 3) ** 2 / 3 + (2 / 3) ** 2 / 3)
    assert (low, high) == pytest.approx(difference_interval(rest, effective, 0.0, 3))
    assert low < gap < high


def test_a_slice_holding_all_of_its_classes_has_no_gap():
    labels = torch.tensor([0, 0, 1, 1])
    assert gap_interval(torch.ones(4, dtype=torch.bool), labels, torch.tensor([0, 1]), 2) == (None, None, None, None)


def test_reduced_embeddings_are_uncorrelated_unit_variance_principal_components():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0)) @ torch.randn(
        6, 6, generator=torch.Generator().manual_seed(1)
    )
    z = reduce_embeddings(x, dims=4)
    assert z.shape == (200, 4)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(4, dtype=torch.float64), atol=1e-9, rtol=0)
    # second way: the eigenvectors of the covariance, up to sign
    _, vectors = torch.linalg.eigh(torch.cov(x.double().T))
    top = vectors[:, -4:].flip(1)
    projected = (x.double() - x.double().mean(0)) @ top
    projected = projected / projected.std(0)
    torch.testing.assert_close(z.abs(), projected.abs(), atol=1e-6, rtol=0)


def test_atypicality_is_the_standardized_log_distance_to_the_class_mean():
    z = torch.tensor([[0.0], [2.0], [10.0], [14.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    a = atypicality(z, labels)
    # every image is 1 (class 0) or 2 (class 1) from its mean; var 1 and 4 (+ floor): all four distances are ~1
    raw = torch.log(torch.tensor([1 / 1.001, 1 / 1.001, 4 / 4.001, 4 / 4.001], dtype=torch.float64) + 1e-9)
    torch.testing.assert_close(a, (raw - raw.mean()) / raw.std() if raw.std() > 0 else raw - raw.mean())


def test_atypicality_whitens_with_the_shrunk_class_covariance_as_torch_distributions_does():
    gen = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [0.2, 0.1, 2.0]], dtype=torch.float64)
    labels = torch.arange(2).repeat_interleave(40)
    z = torch.randn(80, 3, generator=gen, dtype=torch.float64) @ mixing.T + 5.0 * labels[:, None]
    raw = torch.zeros(80, dtype=torch.float64)
    for k in (0, 1):
        part = z[labels == k]
        covariance = torch.cov(part.T, correction=0)
        shrunk = 0.7 * covariance + 0.3 * covariance.trace() / 3 * torch.eye(3) + 1e-3 * torch.eye(3)
        gauss = torch.distributions.MultivariateNormal(part.mean(0), covariance_matrix=shrunk)
        # log N = -(d2 + log det + 3 log 2 pi) / 2, so the squared Mahalanobis distance d2 follows
        d2 = -2 * gauss.log_prob(part) - torch.logdet(shrunk) - 3 * math.log(2 * math.pi)
        raw[labels == k] = torch.log(d2 + 1e-9)
    torch.testing.assert_close(atypicality(z, labels, shrinkage=0.3), (raw - raw.mean()) / raw.std())
    # an image off the class's correlation (along z0 - z1, where the class hardly varies) is the most atypical once
    # whitened, though a diagonal scaling finds it closer than the class's far tail along that correlation
    odd = torch.cat([z, torch.tensor([[1.5, -1.5, 0.0]], dtype=torch.float64)])
    odd_labels = torch.cat([labels, torch.tensor([0])])
    assert int(atypicality(odd, odd_labels, shrinkage=0.1).argmax()) == 80
    part = odd[odd_labels == 0]
    diagonal = ((part - part.mean(0)) ** 2 / part.var(0, unbiased=False)).sum(1)
    assert int(diagonal.argmax()) != len(part) - 1


def test_the_mixtures_likelihood_is_the_one_torch_distributions_gives():
    gen = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(30, 2, generator=gen), torch.randn(30, 2, generator=gen) + 6]).double()
    labels = torch.tensor([0, 1] * 30)
    correct = torch.cat([torch.ones(30), torch.zeros(30)]).double()
    mixture, resp = fit_mixture(z, labels, correct, 2, 2, label_weight=0.5, error_weight=2.0, seed=0)
    params = (mixture.weights, mixture.means, mixture.variances, mixture.label_probs, mixture.correct_probs)
    by_hand = []
    for s in range(2):
        gauss = torch.distributions.Normal(mixture.means[s], mixture.variances[s].sqrt()).log_prob(z).sum(1)
        label = torch.distributions.Categorical(probs=mixture.label_probs[s]).log_prob(labels)
        error = torch.distributions.Bernoulli(probs=mixture.correct_probs[s]).log_prob(correct)
        by_hand.append(torch.log(mixture.weights[s]) + gauss + 0.5 * label + 2.0 * error)
    joint = torch.stack(by_hand, 1)
    torch.testing.assert_close(
        component_log_likelihood(z, torch.eye(2)[labels].double(), correct, params, 0.5, 2.0), joint
    )
    assert mixture.log_likelihood == pytest.approx(float(torch.logsumexp(joint, 1).mean()), abs=1e-5)
    # the two blobs are the two components, the failing one with P(correct) near 0
    assignment = resp.argmax(1)
    assert len(set(assignment[:30].tolist())) == 1 and len(set(assignment[30:].tolist())) == 1
    assert assignment[0] != assignment[30]
    assert float(mixture.correct_probs[assignment[30]]) < 0.01


def test_per_dimension_embedding_weights_are_the_weighted_sum_of_normal_log_densities():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1] * 10)
    correct = torch.rand(20, generator=gen, dtype=torch.float64)
    weights = dimension_weights(2, 4.0)
    assert weights.tolist() == pytest.approx([1 / 6, 1 / 6, 4 / 6])
    mixture, _ = fit_mixture(z, labels, correct, 2, 3, error_weight=3.0, embedding_weight=weights, seed=0)
    params = (mixture.weights, mixture.means, mixture.variances, mixture.label_probs, mixture.correct_probs)
    by_hand = []
    for s in range(3):
        per_dim = torch.distributions.Normal(mixture.means[s], mixture.variances[s].sqrt()).log_prob(z)
        right = correct * torch.log(mixture.correct_probs[s]) + (1 - correct) * torch.log1p(-mixture.correct_probs[s])
        by_hand.append(torch.log(mixture.weights[s]) + per_dim @ weights + 3.0 * right)
    onehot = torch.eye(2, dtype=torch.float64)[labels]
    joint = component_log_likelihood(z, onehot, correct, params, 0.0, 3.0, weights)
    torch.testing.assert_close(joint, torch.stack(by_hand, 1))
    # a weight of 4 on one column is that column counted 4 times: the same likelihood as the column repeated
    repeated = torch.cat([z, z[:, 2:].repeat(1, 3)], dim=1)
    params4 = (params[0], torch.cat([params[1], params[1][:, 2:].repeat(1, 3)], 1)) + (
        torch.cat([params[2], params[2][:, 2:].repeat(1, 3)], 1),
        params[3],
        params[4],
    )
    torch.testing.assert_close(joint, component_log_likelihood(repeated, onehot, correct, params4, 0.0, 3.0, 1 / 6))


def test_fewer_than_two_slices_are_refused():
    with pytest.raises(AuditError, match="slices 1; allowed: at least 2"):
        fit_mixture(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), torch.ones(4), 2, 1)


def _planted(n_per_class: int = 60, classes: int = 3, failing: int = 6, seed: int = 0):
    """Embeddings of `classes` well-separated classes; in each class `failing` images carry one shared extra
    direction and the model gets them wrong (their logits favour the next class)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    centres = torch.randn(classes, 16, generator=gen) * 6
    features = centres[labels] + torch.randn(len(labels), 16, generator=gen)
    odd = torch.zeros(len(labels), dtype=torch.bool)
    for k in range(classes):
        odd[k * n_per_class : k * n_per_class + failing] = True
    features[odd] += 8 * torch.nn.functional.one_hot(torch.tensor(15), 16).float()
    logits = 4 * torch.nn.functional.one_hot(labels, classes).float()
    wrong = (labels + 1) % classes
    logits[odd] = 4 * torch.nn.functional.one_hot(wrong[odd], classes).float()
    return features, logits, labels, odd


def test_the_top_slice_is_the_failing_images_across_classes():
    features, logits, labels, odd = _planted()
    slices = find_slices(features, logits, labels, 6, seed=0)
    top = slices[0]
    assert sorted(top.members.tolist()) == torch.nonzero(odd).flatten().tolist()
    assert top.accuracy == 0.0 and top.rest_accuracy == 1.0 and top.gap == 1.0
    assert top.class_counts == {0: 6, 1: 6, 2: 6}
    assert top.score == pytest.approx(math.sqrt(18))
    assert set(top.exemplars.tolist()) <= set(top.members.tolist()) and len(top.exemplars) == 8
    assert sum(s.size for s in slices) == len(labels)
    assert [s.score for s in slices] == sorted((s.score for s in slices), reverse=True)
    scores = score_against(slices, odd)
    assert scores["top_precision"] == 1.0 and scores["top_recall"] == 1.0 and scores["best_rank"] == 1


def test_score_against_counts_by_hand():
    features, logits, labels, odd = _planted()
    slices = find_slices(features, logits, labels, 6, seed=0)
    truth = torch.zeros(len(labels), dtype=torch.bool)
    truth[slices[0].members[:3]] = True  # 3 of the top slice's 18
    truth[slices[1].members[:3]] = True  # and 3 of the second's
    scores = score_against(slices, truth)
    assert scores["n_truth"] == 6
    assert scores["top_precision"] == pytest.approx(3 / 18) and scores["top_recall"] == pytest.approx(0.5)
    f1 = [2 * (3 / s.size) * 0.5 / (3 / s.size + 0.5) for s in slices[:2]]
    assert scores["best_f1"] == pytest.approx(max(f1)) and scores["best_rank"] == 1 + int(f1[1] > f1[0])


def test_within_class_differences_weigh_each_class_by_the_slice():
    values = torch.tensor([[1.0], [3.0], [5.0], [10.0], [20.0], [30.0], [40.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    members = torch.tensor([0, 3, 4])  # class 0: one image (value 1), class 1: two (10, 20)
    difference, inside, outside = within_class_differences(values, labels, members, 2)
    # class 0: 1 - mean(3, 5) = -3, weight 1/3; class 1: mean(10, 20) - mean(30, 40) = -20, weight 2/3
    assert float(difference) == pytest.approx(-3 / 3 - 20 * 2 / 3)
    assert float(inside) == pytest.approx(1 / 3 + 15 * 2 / 3) and float(outside) == pytest.approx(4 / 3 + 35 * 2 / 3)


def test_distinguishing_features_rank_by_standardized_difference():
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * 50)
    values = torch.randn(100, 3, generator=gen).double()
    members = torch.arange(0, 20)
    values[members, 2] += 5.0  # column 2 sets the slice apart
    found = distinguishing_features(values, ["a", "b", "c"], labels, members, 2)
    assert found[0]["feature"] == "c" and len(found) == 3
    difference, _, _ = within_class_differences(values, labels, members, 2)
    pooled = torch.sqrt(sum(((values[labels == k] - values[labels == k].mean(0)) ** 2).sum(0) for k in (0, 1)) / 100)
    assert found[0]["smd"] == pytest.approx(float(difference[2] / pooled[2]))


def test_cell_shares_and_regions_on_an_analytic_grid():
    attribution = torch.zeros(4, 4, 4)
    attribution[:, :2, :2] = 1.0  # every image: all in the top-left cell of a 2 x 2 grid
    attribution[0] = 0.0
    attribution[0, 3, 3] = 2.0  # image 0: all in the bottom-right cell
    shares = cell_shares(attribution, 2)
    assert shares[0].tolist() == [0, 0, 0, 1] and shares[1].tolist() == [1, 0, 0, 0]
    regions = distinguishing_regions(shares, 2, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2]), 2)
    # slice: image 0 (class 0) and image 2 (class 1); rest: image 1 (class 0), image 3 (class 1)
    assert regions[0] == {"region": "cell 1,1", "slice_share": 0.5, "rest_share": 0.0, "difference": 0.5}


def test_the_gap_compares_the_slice_and_the_rest_on_the_same_classes():
    """Review: 4 wrong images of class 0 (all inside the slice) and 2 right of class 1 inside, 8 right of class 1
    outside. Like for like (class 1 only) the gap is 0; before, the slice's accuracy counted class 0 too: gap 0.667
    with an interval above 0, a 'significant' slice."""
    from auditnn.shortcut.discover import gap_interval

    labels = torch.tensor([0] * 4 + [1] * 10)
    correct = torch.tensor([False] * 4 + [True] * 10)
    rest, gap, low, high = gap_interval(correct, labels, torch.tensor([0, 1, 2, 3, 4, 5]), 2)
    assert rest == 1.0 and gap == 0.0 and low < 0 < high
