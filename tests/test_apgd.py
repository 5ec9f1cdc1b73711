"""Issue 13: APGD and APGD-T (Croce & Hein 2020). Every figure is recomputed a second way: the checkpoints and DLR by
hand, robust accuracy on linear classifiers against the exact distance of each point to the decision boundaries
(min_j (z_y - z_j) / ||w_y - w_j||_dual, the balls inside the [0, 1] box), and the passes over images counted by a
model that counts what it is given."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from auditnn.attacks import APGD, APGDT, ATTACKS, PGD, apgd
from auditnn.attacks.apgd import checkpoints, dlr_loss, targeted_dlr_loss
from auditnn.attacks.evaluate import AttackSpec
from auditnn.attacks.norms import NORMS
from auditnn.errors import AuditError

SHAPE = (2, 4, 4)  # D = 32 pixels
D = 32
DUAL = {"linf": 1, "l2": 2}  # the distance to a hyperplane w.x = c in norm p is |w.x - c| / ||w||_dual


def linear(weight: torch.Tensor, bias: torch.Tensor, scale: float = 1.0) -> nn.Module:
    """The classifier x -> scale * (weight @ flatten(x) + bias)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(scale * weight)
        layer.bias.copy_(scale * bias)
    return nn.Sequential(nn.Flatten(), layer).eval()


def random_case(n: int = 200, classes: int = 4):
    """A random K-class linear model on n images with pixels in [0.3, 0.7] (every ball below stays inside the box:
    Linf eps <= 0.1, L2 eps <= 0.3), labelled with the model's answers. Returns weight, bias, images, labels."""
    weight = torch.randn(classes, D, generator=torch.Generator().manual_seed(1))
    bias = torch.zeros(classes)
    x = 0.3 + 0.4 * torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = linear(weight, bias)(x).argmax(1)
    return weight, bias, x, y


def margins(weight, bias, x, y) -> torch.Tensor:
    """(n, K) z_y - z_j in float64, infinite at j = y."""
    z = x.flatten(1).double() @ weight.double().T + bias.double()
    m = z.gather(1, y.view(-1, 1)) - z
    m[torch.arange(len(y)), y] = float("inf")
    return m


def distance(weight, bias, x, y, norm: str) -> torch.Tensor:
    """(n,) the smallest perturbation in `norm` that moves each point off its label: min over j != y of
    (z_y - z_j) / ||w_y - w_j||_dual, in float64 (exact for a linear model when the ball stays inside the box)."""
    w = weight.double()
    gaps = (w[y].unsqueeze(1) - w.unsqueeze(0)).norm(p=DUAL[norm], dim=2)
    return (margins(weight, bias, x, y) / gaps).min(1).values


def clear_of(dist: torch.Tensor, radii: list[float], share: float = 0.03) -> torch.Tensor:
    """The points whose distance is not within `share` of any radius: an attack that stops a hair short of the exact
    optimum must not decide a figure."""
    keep = torch.ones_like(dist, dtype=torch.bool)
    for eps in radii:
        keep &= (dist - eps).abs() > share * eps
    return keep


# ---------------------------------------------------------------- the pieces, by hand


def test_the_checkpoints_for_100_steps_are_the_papers():
    # p_1 = 0.22, then p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): gaps 0.19, 0.16, 0.13, 0.10, 0.07, then the
    # floor 0.06 twice: 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (the next, 1.05, is past the end).
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # 10 steps: ceil(2.2, 4.1, 5.7, 7.0, 8.0, 8.7, 9.3, 9.9) = 3, 5, 6, 7, 8, 9, 10, 10; a checkpoint at the last
    # iterate changes nothing, so it is dropped.
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert checkpoints(200) == [44, 82, 114, 140, 160, 174, 186, 198]
    assert checkpoints(1) == []


def test_dlr_by_hand_and_its_invariance_to_scale_and_shift():
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0], [3.0, 1.0, 0.5, -1.0]])
    # label 0 (on top): -(3 - 1) / (3 - 0.5); label 2: -(0.5 - 3) / (3 - 0.5)
    assert torch.allclose(dlr_loss(logits, torch.tensor([0, 2])), torch.tensor([-2 / 2.5, 2.5 / 2.5]))
    # targeted, label 0 toward 3: -(3 - (-1)) / (3 - (0.5 + (-1)) / 2)
    assert torch.allclose(
        targeted_dlr_loss(logits[:1], torch.tensor([0]), torch.tensor([3])), torch.tensor([-4 / 3.25])
    )
    labels, targets = torch.tensor([0, 2]), torch.tensor([3, 1])
    for changed in (logits * 1e4, logits - 7.0):
        assert torch.allclose(dlr_loss(changed, labels), dlr_loss(logits, labels), atol=1e-4)
        assert torch.allclose(targeted_dlr_loss(changed, labels, targets), targeted_dlr_loss(logits, labels, targets))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_halving_the_step_at_the_checkpoints_settles_on_an_interior_optimum(norm, monkeypatch):
    # The model hands back its pixels as logits and the objective is -||x - 0.537||^2: its maximum, every pixel at
    # 0.537, lies inside the ball of radius 0.1 around 0.5. Steps of 2 eps overshoot it; only the halvings (with the
    # restarts from the best point) bring the iterates close.
    x, y = torch.full((3, 1, 2, 2), 0.5), torch.zeros(3, dtype=torch.long)

    def objective(logits, labels, targets):
        return -((logits - 0.537) ** 2).sum(1)

    def never(logits, labels, targets):
        return torch.zeros(len(logits), dtype=torch.bool)

    def shortfall() -> float:
        """How far below the maximum, 0, the worst point's best objective value stayed."""
        generator = torch.Generator().manual_seed(0)
        run = apgd.apgd_run(nn.Flatten(), x, y, None, objective, never, NORMS[norm], 0.1, 100, generator)
        assert torch.allclose(run.loss, objective(run.adversarial.flatten(1), y, None))  # the point kept is the best
        return -float(run.loss.min())

    assert shortfall() < 1e-5  # every pixel within about 0.0016 of 0.537
    monkeypatch.setattr(apgd, "checkpoints", lambda steps: [])
    assert shortfall() > 5e-5


# ---------------------------------------------------------------- the analytic linear classifier


@pytest.mark.parametrize("norm,radii", [("linf", [0.02, 0.04]), ("l2", [0.1, 0.2])])
@pytest.mark.parametrize(
    "make", [lambda **s: APGD(**s), lambda **s: APGD(loss="dlr", **s), lambda **s: APGDT(target_classes=3, **s)]
)
def test_robust_accuracy_on_a_linear_classifier_is_the_analytic_count(norm, radii, make):
    weight, bias, x, y = random_case()
    model = linear(weight, bias)
    dist = distance(weight, bias, x, y, norm)
    keep = clear_of(dist, radii)
    assert keep.sum() > 150
    x, y, dist = x[keep], y[keep], dist[keep]
    for eps in radii:
        attack = make(eps=eps, norm=norm)
        result = attack.run(model, x, y)
        analytic = dist > eps
        assert 0.2 < float(analytic.float().mean()) < 0.8  # the figure separates the points
        # point by point: broken exactly when a perturbation of size eps reaches another class's boundary
        assert torch.equal(result.robust, analytic), attack.run_label
        assert result.robust_accuracy == pytest.approx(float(analytic.float().mean()))


@pytest.mark.parametrize("loss", ["ce", "dlr"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.15)])
def test_targeted_apgd_reaches_the_target_exactly_when_the_analytic_distance_allows(loss, norm, eps):
    # Classes 2 and 3 sit 1000 below (no weights): a point reaches target 1 exactly when it crosses the boundary
    # between its label 0 and 1, at distance (z_0 - z_1) / ||w_0 - w_1||_dual. Class 1's bias gives about 70 % of
    # the points label 0; those labelled 1 are not counted.
    weight, _, x, _ = random_case()
    weight[2:] = 0.0
    gap = (x.flatten(1) @ (weight[0] - weight[1])).median()
    bias = torch.tensor([0.0, float(gap) - 0.5, -1000.0, -1000.0])
    model = linear(weight, bias)
    with torch.no_grad():
        y = model(x).argmax(1)
    z = x.flatten(1).double() @ weight.double().T + bias.double()
    dist = (z[:, 0] - z[:, 1]) / (weight[0] - weight[1]).double().norm(p=DUAL[norm])
    keep = clear_of(dist, [eps]) & (y == 0)
    keep[:10] |= y[:10] == 1  # a few points already of the target: left out of the figures
    x, y, dist = x[keep], y[keep], dist[keep]
    result = APGD(eps=eps, norm=norm, loss=loss, target=1).run(model, x, y)
    assert torch.equal(result.counted, y == 0) and result.left_out > 0
    analytic = (dist > eps) & (y == 0)
    assert 0.2 < float(analytic[y == 0].float().mean()) < 0.8
    assert torch.equal(result.robust, analytic)
    assert (result.adversarial_prediction[~analytic & (y == 0)] == 1).all()


def test_dlr_is_blind_to_a_logit_scale_that_zeroes_the_cross_entropy_gradient():
    weight, bias, x, y = random_case()
    eps = 0.04
    dist = distance(weight, bias, x, y, "linf")
    # 1e4 x margins of at least 0.05 is 500: exp(-500) underflows float32, so softmax is exactly one-hot and the
    # cross-entropy gradient exactly zero.
    keep = clear_of(dist, [eps]) & (margins(weight, bias, x, y).min(1).values > 0.05)
    x, y, dist = x[keep], y[keep], dist[keep]
    analytic = dist > eps
    plain, scaled = linear(weight, bias), linear(weight, bias, scale=1e4)
    probe = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(scaled(probe), y, reduction="sum"), probe)
    assert not grad.any()  # the premise, in plain torch
    dlr_plain = APGD(eps=eps, loss="dlr").run(plain, x, y)
    dlr_scaled = APGD(eps=eps, loss="dlr").run(scaled, x, y)
    assert torch.equal(dlr_plain.robust, analytic) and torch.equal(dlr_scaled.robust, analytic)
    assert not dlr_scaled.zero_gradient.any()
    # The cross-entropy attacks see zero gradients and keep most breakable points standing.
    for attack in (PGD(eps=eps, steps=100), APGD(eps=eps)):
        result = attack.run(scaled, x, y)
        assert result.zero_gradient.float().mean() > 0.9, attack.run_label  # at their random starts
        assert int(result.robust.sum()) > int(analytic.sum()) + 0.5 * int((~analytic).sum()), attack.run_label
        assert result.robust[analytic].all()  # and, as every attack must, breaks no point that cannot be


def test_apgd_t_breaks_a_point_that_only_a_push_toward_its_third_class_breaks():
    # 16 pixels at 0.5 +- 0.01, s = sum of their shifts. z_0 = 0, z_1 = -5 + s, z_2 = -20 - 50 s, z_3 = -100. Class 1
    # is 5 / 16 = 0.31 away in Linf, class 2 only (20 + 50 s) / 800 <= 0.035: breakable at eps 0.05, but only by
    # lowering s. The cross-entropy gradient, 0.0067 - 50 x 2e-9 per pixel, and untargeted DLR's (its runner-up is
    # class 1) both raise s; targeted DLR toward class 2 lowers it.
    weight = torch.zeros(4, 16)
    weight[1], weight[2] = 1.0, -50.0
    bias = torch.tensor([0.0, -5.0 - 8.0, -20.0 + 400.0, -100.0])
    model = linear(weight, bias)
    x = 0.5 + 0.01 * (2 * torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3)) - 1)
    y = torch.zeros(6, dtype=torch.long)
    dist = distance(weight, bias, x, y, "linf")
    assert (dist < 0.04).all() and (margins(weight, bias, x, y)[:, 1] / 16 > 0.25).all()
    eps = 0.05
    for attack in (APGD(eps=eps), APGD(eps=eps, loss="dlr"), PGD(eps=eps, steps=100)):
        assert attack.run(model, x, y).robust.all(), attack.run_label
    result = APGDT(eps=eps, target_classes=2).run(model, x, y)
    assert not result.robust.any() and (result.adversarial_prediction == 2).all()
    assert APGDT(eps=eps, target_classes=1).run(model, x, y).robust.all()  # class 1 alone is out of reach


# ---------------------------------------------------------------- what it counts


class Counting(nn.Module):
    """Wraps a model and counts the images it is given (a forward, with or without the backward after it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.model(x)


@pytest.mark.parametrize(
    "make",
    [lambda: APGD(eps=0.03, steps=7, restarts=3), lambda: APGDT(eps=0.03, steps=5, restarts=2, target_classes=3)],
)
def test_the_passes_it_reports_are_the_images_the_model_saw(make):
    weight, bias, x, y = random_case(n=60)
    y[::6] = (y[::6] + 1) % 4  # some points wrong before the attack: not attacked
    counting = Counting(linear(weight, bias))
    result = make().run(counting, x, y)
    assert 0 < int(result.robust.sum()) < int(result.clean_correct.sum())  # some broken, some standing
    assert result.gradient_evaluations == counting.images


def test_each_attack_names_its_run_and_counts_its_steps():
    assert (APGD().run_label, APGD(loss="dlr").run_label, APGDT().run_label) == ("apgd-ce", "apgd-dlr", "apgd-t")
    assert APGD(steps=200).run_label == "apgd-ce 200 steps" and APGDT(steps=50).run_label == "apgd-t 50 steps"
    assert (APGD().step_count, APGD(restarts=3).restart_count, APGDT(steps=7).step_count) == (100, 3, 7)
    assert AttackSpec(method="apgd-t", eps=[0.1], target_classes=2, steps=None).build(0.1).steps == 100
    assert set(ATTACKS["apgd"].norms) == set(ATTACKS["apgd-t"].norms) == {"linf", "l2"}


# ---------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: APGD(loss="hinge"), "loss 'hinge' is unknown; allowed: ce or dlr"),
        (lambda: APGD(steps=0), "steps 0; allowed: at least 1"),
        (lambda: APGDT(restarts=0), "restarts 0; allowed: at least 1"),
        (lambda: APGDT(target=3), "method apgd-t picks its own targets; allowed: leave target unset"),
        (lambda: APGDT(target="random"), "method apgd-t picks its own targets; allowed: leave target unset"),
        (lambda: APGDT(target_classes=0), "target classes 0; allowed: 1 .. K-1 (K: the model's classes)"),
        (
            lambda: AttackSpec(method="pgd", eps=[0.1], loss="dlr").validate(),
            "method pgd takes projected gradient steps from random starts in the ball, so loss dlr would be ignored; "
            "allowed: leave loss unset with pgd, or method apgd",
        ),
    ],
)
def test_bad_settings_are_refused_in_one_line_naming_the_value(make, message):
    with pytest.raises(AuditError) as caught:
        make()
    assert str(caught.value) == message


def _classes(k: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    weight = torch.randn(k, D, generator=torch.Generator().manual_seed(4))
    x = 0.3 + 0.4 * torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(5))
    model = linear(weight, torch.zeros(k))
    with torch.no_grad():
        return model, x, model(x).argmax(1)


@pytest.mark.parametrize(
    "k,make,message",
    [
        (
            2,
            lambda: APGD(eps=0.03, loss="dlr"),
            "loss dlr with 2 classes; allowed: loss ce, or a model with at least 3 classes",
        ),
        (
            3,
            lambda: APGD(eps=0.03, loss="dlr", target="least-likely"),
            "loss dlr toward a target with 3 classes; allowed: loss ce, or a model with at least 4 classes",
        ),
        (
            3,
            lambda: APGDT(eps=0.03, target_classes=2),
            "method apgd-t with 3 classes; allowed: a model with at least 4 classes (targeted DLR)",
        ),
        (4, lambda: APGDT(eps=0.03, target_classes=9), "target classes 9; allowed: 1 .. 3 (the model has 4 classes)"),
        (
            10,
            lambda: APGDT(eps=0.03, target_classes=10),
            "target classes 10; allowed: 1 .. 9 (the model has 10 classes)",
        ),
    ],
)
def test_settings_the_model_cannot_serve_are_refused_once_its_classes_are_known(k, make, message):
    model, x, y = _classes(k)
    with pytest.raises(AuditError) as caught:
        make().run(model, x, y)
    assert str(caught.value) == message
    APGD(eps=0.03, steps=2).run(model, x, y)  # the cross-entropy serves any number of classes
    if k >= 4:  # left unset, APGD-T's target classes are AutoAttack's 9, at most K-1
        APGDT(eps=0.03, steps=2).run(model, x, y)
