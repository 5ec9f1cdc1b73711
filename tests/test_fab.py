"""Issue 13: FAB-T (Croce & Hein, ICML 2020, as AutoAttack runs it). Every figure is recomputed a second way: the
box-constrained projection against a brute-force search over the hyperplane in 2-D and 3-D and the closed form where
the box does not bind; the attack on a linear classifier against the analytic distances to its decision boundaries
and a hand-run of FAB's scalar recursion along the projection direction; its model evaluations hand-counted."""

import math

import pytest
import torch
import torch.nn as nn

from auditnn.attacks import ATTACKS, FAB
from auditnn.attacks.evaluate import AttackSpec, evaluate_attack
from auditnn.attacks.fab import ALPHA_MAX, BETA, ETA, project_onto_hyperplane
from auditnn.errors import AuditError

DUAL = {"linf": 1, "l2": 2}  # the distance to w . z = b in norm p is |w . x - b| / ||w||_q, q the dual exponent


def hand_norm(norm: str, d: torch.Tensor) -> torch.Tensor:
    flat = d.flatten(1).double()
    return flat.abs().amax(1) if norm == "linf" else flat.pow(2).sum(1).sqrt()


# ---------------------------------------------------------------- the projection onto a hyperplane inside the box


def brute_force(point: torch.Tensor, w: torch.Tensor, b: float, norm: str, grid: int) -> float:
    """The smallest distance from `point` to a point of the hyperplane w . z = b inside [0, 1]^D (D = 2 or 3), by
    search: the coordinate with the largest |w| is solved for, the others run over a grid of [0, 1]."""
    dims = len(w)
    k = int(w.abs().argmax())
    free = [i for i in range(dims) if i != k]
    axes = torch.meshgrid(*[torch.linspace(0, 1, grid, dtype=torch.float64)] * len(free), indexing="ij")
    z = torch.zeros(axes[0].numel(), dims, dtype=torch.float64)
    for i, axis in zip(free, axes, strict=True):
        z[:, i] = axis.reshape(-1)
    z[:, k] = (b - z[:, free] @ w[free]) / w[k]
    z = z[(z[:, k] >= 0) & (z[:, k] <= 1)]
    return float(hand_norm(norm, z - point).min())


def cases(dims: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points in the box, random hyperplanes that cut the box (b between the least and the most of w . z over it)."""
    gen = torch.Generator().manual_seed(seed)
    points = torch.rand(count, dims, generator=gen, dtype=torch.float64)
    w = torch.randn(count, dims, generator=gen, dtype=torch.float64)
    low, high = w.clamp(max=0).sum(1), w.clamp(min=0).sum(1)
    b = low + (high - low) * torch.rand(count, generator=gen, dtype=torch.float64)
    return points, w, b


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dims,grid", [(2, 200001), (3, 1201)])
def test_the_projection_is_the_nearest_point_of_the_hyperplane_inside_the_box_by_brute_force(norm, dims, grid):
    points, w, b = cases(dims, 12, seed=dims)
    d = project_onto_hyperplane(points, w, b, norm)
    landed = points + d
    assert torch.allclose((w * landed).sum(1), b, atol=1e-12)  # on the hyperplane
    assert landed.min() >= 0 and landed.max() <= 1  # in the box
    found = hand_norm(norm, d)
    searched = torch.tensor(
        [brute_force(points[i], w[i], float(b[i]), norm, grid) for i in range(len(b))], dtype=torch.float64
    )
    # No feasible grid point is nearer (the projection is optimal), and the grid gets as near as its spacing allows.
    spacing = 1 / (grid - 1) * (1 + float(w.abs().max() / w.abs().amax(1).min()))
    assert (found <= searched + 1e-12).all()
    assert torch.allclose(found, searched, atol=2 * spacing * (dims - 1))
    # the box binds in some of these cases: the unconstrained projection would leave it or be shorter
    free = (b - (w * points).sum(1)).abs() / w.norm(p=DUAL[norm], dim=1)
    assert (found > free + 1e-9).any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_where_the_box_does_not_bind_the_projection_is_the_closed_form(norm):
    # Points in [0.3, 0.7], hyperplanes at most 0.05 away (Linf), 0.2 (L2): no coordinate reaches the box.
    gen = torch.Generator().manual_seed(5)
    points = 0.3 + 0.4 * torch.rand(20, 50, generator=gen, dtype=torch.float64)
    w = torch.randn(20, 50, generator=gen, dtype=torch.float64)
    distance = (0.05 if norm == "linf" else 0.2) * (2 * torch.rand(20, generator=gen, dtype=torch.float64) - 1)
    b = (w * points).sum(1) + distance * w.norm(p=DUAL[norm], dim=1)
    d = project_onto_hyperplane(points, w, b, norm)
    # Linf: every coordinate moves by the distance, along sign(w); L2: along w, by distance / ||w||_2 per unit of w.
    closed = distance.unsqueeze(1) * (w.sign() if norm == "linf" else w / w.norm(dim=1, keepdim=True))
    assert torch.allclose(d, closed, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_hyperplane_that_misses_the_box_gets_the_corner_that_comes_nearest(norm):
    points = torch.tensor([[0.2, 0.6], [0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0], [1.0, -2.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([3.0, -5.0, 0.5])  # above the box's top of w . z (2), below its bottom (-2); the third cuts it
    d = project_onto_hyperplane(points, w, b.double(), norm)
    expected = torch.tensor([[0.8, 0.4], [-0.5, 0.5], [0.0, 0.4]], dtype=torch.float64)  # (1, 1), (0, 1), (0.9, 0.5)
    assert torch.allclose(d, expected, atol=1e-12)
    # an all-zero w, or a point already on the hyperplane: no step
    zero = project_onto_hyperplane(
        points[:2], torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]).double(), norm
    )
    on = project_onto_hyperplane(points[:1], w[:1], (w[:1] * points[:1]).sum(1), norm)
    assert not zero.any() and not on.any()


# ---------------------------------------------------------------- FAB-T on a linear classifier


def fab_ratio(steps: int) -> float:
    """The smallest adversarial FAB finds on a linear classifier, in units of the distance r to the boundary it
    targets, by running its recursion by hand: every iterate lies on the segment from the clean image along the
    projection direction d* (|d*| = r), at a fraction s. From s, the projection of the iterate has length (1 - s) r
    and that of the clean image r, so alpha = min((1 - s) / (2 - s), alpha_max) and the step lands at
    m = (1 - alpha)(s + eta (1 - s)) + alpha eta > 1: past the boundary, adversarial, kept if smaller, and pulled
    back to s = beta m. The first iterate is eta (alpha is capped at 0.1 there), the second about 1.0052."""
    s, smallest = 0.0, math.inf
    for _ in range(steps):
        alpha = min((1 - s) / (2 - s), ALPHA_MAX)
        m = (1 - alpha) * (s + ETA * (1 - s)) + alpha * ETA
        assert m > 1
        smallest = min(smallest, m)
        s = BETA * m
    return smallest


@pytest.fixture(scope="module")
def linear():
    """A 4-class linear classifier on 48 1x4x4 images with pixels in [0.3, 0.7] (every ball used below lies inside
    the box), each labelled with the model's own answer. Returns the model, images, labels, clean logits (float64)
    and the weights (float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    x = 0.3 + 0.4 * torch.rand(48, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x).double()
    return model, x, logits.argmax(1), logits, model[1].weight.detach().double()


def distances(linear, norm: str) -> torch.Tensor:
    """(N, K): the analytic distance (z_y - z_j) / ||w_y - w_j||_q from each image to its boundary with class j
    (inf for j = y)."""
    _, _, y, logits, weights = linear
    gap = logits.gather(1, y.unsqueeze(1)) - logits
    r = gap / (weights[y].unsqueeze(1) - weights.unsqueeze(0)).norm(p=DUAL[norm], dim=2)
    return r.scatter(1, y.unsqueeze(1), math.inf)


def expected(linear, norm: str, eps: float, target_classes: int, steps: int) -> torch.Tensor:
    """By hand, FAB-T's kept norm per image (0 where it stays robust): the classes are tried in the order of their
    clean logit, and the first whose boundary FAB gets within eps of (at fab_ratio x its distance) breaks it."""
    _, _, y, logits, _ = linear
    r, ratio = distances(linear, norm), fab_ratio(steps)
    order = logits.scatter(1, y.unsqueeze(1), -math.inf).argsort(1, descending=True)[:, :target_classes]
    kept = torch.zeros(len(y), dtype=torch.float64)
    for i in range(len(y)):
        for j in order[i]:
            if ratio * r[i, j] <= eps:
                kept[i] = ratio * r[i, j]
                break
    return kept


@pytest.mark.parametrize("norm,eps", [("linf", 0.02), ("linf", 0.05), ("l2", 0.1), ("l2", 0.15)])
def test_on_a_linear_classifier_fab_t_finds_the_boundary_and_its_robust_accuracy_is_the_analytic_count(
    linear, norm, eps
):
    model, x, y, _, _ = linear
    minimal = distances(linear, norm).amin(1)
    ratio = fab_ratio(100)
    assert ratio == pytest.approx(1.005213, abs=1e-6)
    # FAB overshoots the boundary by this ratio: no image here lies in the band where that changes the count
    assert not ((minimal > eps / ratio) & (minimal <= eps)).any()
    result = FAB(eps=eps, norm=norm, target_classes=3).run(model, x, y)
    analytic = float((minimal > eps).double().mean())
    assert 0.1 < analytic < 0.9 and result.robust_accuracy == pytest.approx(analytic)
    broken = ~result.robust
    # each broken image's kept norm is the hand-run's, and never below the analytic minimum
    hand = expected(linear, norm, eps, 3, 100)
    assert torch.equal(broken, hand > 0)
    assert torch.allclose(result.perturbation_norm.double(), hand, rtol=1e-4, atol=1e-6)
    assert (result.perturbation_norm[broken].double() >= minimal[broken] * (1 - 1e-5)).all()
    # where the first class tried is the nearest boundary, that is the analytic minimum times FAB's overshoot
    top_other = linear[3].scatter(1, y.unsqueeze(1), -math.inf).argmax(1)
    nearest_first = broken & (distances(linear, norm).argmin(1) == top_other)
    assert nearest_first.sum() >= 5
    assert torch.allclose(
        result.perturbation_norm[nearest_first].double(), ratio * minimal[nearest_first], rtol=1e-4, atol=1e-6
    )


def test_only_the_highest_scoring_classes_are_tried_even_where_a_lower_scoring_one_is_nearer():
    # z_0 = 0; class 1 scores -0.01 (second) but moves only with pixel 0 and can never pass class 0 in the box;
    # class 2 scores -1 (third) and its boundary is 1 / ||(0, 10, 10, 10)||_1 = 1/30 away in Linf.
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.0, 0, 0, 0], [0.002, 0, 0, 0], [0, 10, 10, 10]]))
        model[1].bias.copy_(torch.tensor([0.0, -0.011, -16.0]))
    x, y = torch.full((2, 1, 2, 2), 0.5), torch.zeros(2, dtype=torch.long)
    assert FAB(eps=0.05, target_classes=1).run(model, x, y).robust.all()
    both = FAB(eps=0.05, target_classes=2).run(model, x, y)
    assert not both.robust.any()
    assert torch.allclose(
        both.perturbation_norm.double(), torch.full((2,), fab_ratio(100) / 30, dtype=torch.float64), rtol=1e-4
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_each_class_is_tried_only_on_the_points_still_standing_counted_in_model_evaluations(linear, norm):
    model, x, y, _, _ = linear
    eps, steps, n = (0.05 if norm == "linf" else 0.15), 10, len(y)
    result = FAB(eps=eps, norm=norm, target_classes=3, steps=steps).run(model, x, y)
    assert torch.allclose(
        result.perturbation_norm.double(), expected(linear, norm, eps, 3, steps), rtol=1e-4, atol=1e-6
    )
    # The run's clean forward, FAB's own clean forward for the ranking, 2 per step (forward+backward, then the
    # forward that checks the iterate) for every point still standing at each class, and the run's final forward.
    standing = [n] + [int((expected(linear, norm, eps, classes, steps) == 0).sum()) for classes in (1, 2)]
    assert standing[1] < n
    assert result.gradient_evaluations == n + n + 2 * steps * sum(standing) + n


def test_with_a_target_fab_pushes_each_point_to_it_across_its_boundary_with_the_label(linear):
    model, x, y, _, _ = linear
    result = FAB(eps=0.08, target=3).run(model, x, y)
    reached = ~result.robust & result.counted
    assert reached.sum() >= 5
    assert torch.equal(result.adversarial_prediction[reached], torch.full((int(reached.sum()),), 3))
    # reaching class 3 means crossing the boundary between the label and 3: no smaller perturbation can
    r = distances(linear, "linf")[:, 3]
    assert (result.perturbation_norm[reached].double() >= r[reached] * (1 - 1e-5)).all()
    assert result.left_out == int((y == 3).sum())


def test_a_model_without_gradient_is_flagged_and_left_robust():
    class Flat(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 3) + torch.tensor([1.0, 0.0, 0.0]) + 0 * x.flatten(1).sum(1, keepdim=True)

    x = torch.rand(6, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    result = FAB(eps=0.1, steps=3).run(Flat(), x, torch.zeros(6, dtype=torch.long))
    assert result.zero_gradient.all() and result.robust.all() and torch.equal(result.adversarial, x)


def test_the_default_number_of_target_classes_is_autoattacks_nine_capped_at_k_minus_one():
    assert FAB().target_count(3) == 2 and FAB().target_count(10) == 9 and FAB().target_count(100) == 9
    assert FAB(target_classes=4).target_count(10) == 4
    assert (FAB().run_label, FAB(target="random").run_label, FAB().step_count, FAB(restarts=2).restart_count) == (
        "fab-t",
        "fab",
        100,
        2,
    )
    assert (FAB(steps=200).run_label, FAB(steps=5, target=1).run_label) == ("fab-t-200", "fab-5")
    assert ATTACKS["fab"] is FAB and FAB.minimum_norm


def test_the_sanity_run_with_twice_the_steps_is_named_apart_from_the_run_itself(linear):
    model, x, y, _, _ = linear
    spec = AttackSpec(method="fab", eps=[0.05], steps=10, target_classes=3, batch_size=16)
    row = evaluate_attack(model, x, y, spec).rows[0]
    assert set(row.robust_accuracy_per_attack) == {"fab-t-10", "fab-t-20", "fgsm"}
    # the headline is the worst case per sample over the runs; on a linear model FAB-T already is the analytic count
    analytic = float((distances(linear, "linf").amin(1) > 0.05).double().mean())
    assert row.robust_accuracy == pytest.approx(analytic) == pytest.approx(row.robust_accuracy_per_attack["fab-t-10"])


# ---------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"target_classes": 0}, "target classes 0; allowed: 1 .. K-1 (K: the model's classes)"),
        ({"steps": 0}, "steps 0; allowed: at least 1"),
        ({"restarts": 0}, "restarts 0; allowed: at least 1"),
        ({"norm": "l1"}, "norm 'l1' is unknown; allowed: linf or l2"),
    ],
)
def test_bad_settings_are_refused_in_one_line_naming_the_value(settings, message):
    with pytest.raises(AuditError) as caught:
        FAB(**settings)
    assert str(caught.value) == message


@pytest.mark.parametrize("classes", [4, 12])
def test_target_classes_past_k_minus_one_are_refused_once_the_model_is_known(linear, classes):
    model, x, y, _, _ = linear
    with pytest.raises(AuditError) as caught:
        FAB(eps=0.05, target_classes=classes, steps=2).run(model, x, y)
    assert str(caught.value) == f"target classes {classes}; allowed: 1 .. 3 (the model has 4 classes)"
    spec = AttackSpec(method="fab", eps=[0.05], target_classes=classes, steps=2, sanity=False)
    spec.validate()  # K is not known before the model runs
    with pytest.raises(AuditError, match=f"^target classes {classes}; allowed: 1 .. 3"):
        evaluate_attack(model, x, y, spec)
