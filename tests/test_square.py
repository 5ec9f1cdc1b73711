"""Square (Andriushchenko et al. 2020), issue 13: every figure is recomputed a second way. The p schedule and the L2
meta-pattern against hand-written values; linear classifiers against the analytic distance to each other class's
decision boundary, min_j (z_y - z_j) / ||w_y - w_j||_dual; a zero-gradient model that PGD cannot move; the ball and
the box by hand-written norms; the queries by a model that counts the images it is shown."""

import math

import pytest
import torch
import torch.nn as nn

from auditnn.attacks import PGD, Square
from auditnn.attacks.evaluate import AttackSpec, evaluate_attack
from auditnn.attacks.square import Windows, meta_pattern, p_schedule, square_loss
from auditnn.errors import AuditError

DUAL = {"linf": 1, "l2": 2}  # the dual norm's p: the distance to a hyperplane w.x = c in norm q is |.| / ||w||_dual


def linear_case(n: int, shape: tuple[int, int, int], classes: int, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A linear classifier on `shape` images and n images with pixels in [0.3, 0.7] (every eps-ball used below,
    Linf eps <= 0.1 and L2 eps <= 0.3, lies inside the box)."""
    gen = torch.Generator().manual_seed(seed)
    dim = math.prod(shape)
    linear = nn.Linear(dim, classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(classes, dim, generator=gen))
        linear.bias.zero_()
    x = 0.3 + 0.4 * torch.rand(n, *shape, generator=gen)
    return nn.Sequential(nn.Flatten(), linear).eval(), x


def hand_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """(n,) float64: the smallest perturbation, in `norm`, that brings each point to another class's boundary, one
    class pair at a time in float64 (nothing of the attack's)."""
    weight, bias = model[1].weight.detach().double(), model[1].bias.detach().double()
    flat = x.flatten(1).double()
    out = []
    for i in range(len(x)):
        label = int(y[i])
        gaps = []
        for j in range(weight.shape[0]):
            if j != label:
                w = weight[label] - weight[j]
                gap = float(w @ flat[i] + bias[label] - bias[j])
                gaps.append(gap / float(w.abs().pow(DUAL[norm]).sum() ** (1 / DUAL[norm])))
        out.append(min(gaps))
    return torch.tensor(out, dtype=torch.float64)


def hand_norm(norm: str, delta: torch.Tensor) -> torch.Tensor:
    flat = delta.flatten(1).double()
    return flat.abs().amax(1) if norm == "linf" else flat.pow(2).sum(1).sqrt()


class Counting(nn.Module):
    """Wraps a model and counts the images it is shown."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.model(x)


class Round(nn.Module):
    """Rounds the input to steps of 1/255: the model's input gradient is exactly zero everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255) / 255


# ---------------------------------------------------------------- the schedule and the pattern, by hand


def test_p_schedule_halves_p_init_at_the_reference_breakpoints():
    # The reference's p_selection on its 10000-iteration scale: halved after 10, 50, 200, 500, 1000, 2000, 4000,
    # 6000 and 8000.
    hand = [
        (0, 0.8),
        (10, 0.8),
        (11, 0.4),
        (50, 0.4),
        (51, 0.2),
        (200, 0.2),
        (201, 0.1),
        (500, 0.1),
        (501, 0.05),
        (1000, 0.05),
        (1001, 0.025),
        (2000, 0.025),
        (2001, 0.0125),
        (4000, 0.0125),
        (4001, 0.00625),
        (6000, 0.00625),
        (6001, 0.003125),
        (8000, 0.003125),
        (8001, 0.0015625),
        (9999, 0.0015625),
    ]
    for iteration, p in hand:
        assert p_schedule(0.8, iteration, 10000) == pytest.approx(p, rel=1e-12), iteration
    # rescaled to the budget as int(iteration / queries * 10000): 5000 queries run twice as fast through it
    assert [p_schedule(0.8, i, 5000) for i in (5, 6, 25, 26)] == pytest.approx([0.8, 0.4, 0.4, 0.2])
    # 100 queries: iteration 1 is already 100 on the reference's scale (past 50), iteration 3 is 300 (past 200)
    assert [p_schedule(0.8, i, 100) for i in (0, 1, 2, 3, 5, 6, 11, 99)] == pytest.approx(
        [0.8, 0.2, 0.2, 0.1, 0.1, 0.05, 0.025, 0.8 / 512]
    )
    assert p_schedule(0.5, 11, 10000) == pytest.approx(0.25)


def test_the_l2_meta_pattern_by_hand():
    # side 3: the top row is the bump of a 1x3 rectangle, [1/4, 1 + 1/4, 1/4]; the bottom two rows minus the bump of
    # a 2x3 rectangle, [[1/4, 1/4, 1/4], [1/4, 1 + 1/4, 1/4]]; each half of unit norm, then the whole.
    top = torch.tensor([[0.25, 1.25, 0.25]], dtype=torch.float64)
    bottom = torch.tensor([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]], dtype=torch.float64)
    hand = torch.cat([top / math.sqrt(1.6875), -bottom / math.sqrt(1.875)]) / math.sqrt(2)
    assert torch.allclose(meta_pattern(3), hand, atol=1e-12)
    assert torch.equal(meta_pattern(1), torch.tensor([[-1.0]], dtype=torch.float64))
    for side in (2, 5, 8):
        pattern = meta_pattern(side)
        assert pattern.norm().item() == pytest.approx(1.0)
        assert (pattern[: side // 2] >= 0).all() and (pattern[side // 2 :] <= 0).all()


def test_windows_reach_every_position_inside_the_image_and_cover_side_by_side_pixels():
    windows = Windows(5, 7, torch.device("cpu"))
    rows, cols = windows.corners(2000, 3, torch.Generator().manual_seed(0))
    assert set(rows.tolist()) == {0, 1, 2} and set(cols.tolist()) == {0, 1, 2, 3, 4}  # the last row and column too
    mask = windows.mask(rows[:50], cols[:50], 3)
    for i in range(50):
        hand = torch.zeros(1, 5, 7, dtype=torch.bool)
        hand[:, rows[i] : rows[i] + 3, cols[i] : cols[i] + 3] = True
        assert torch.equal(mask[i], hand)


def test_the_loss_is_the_margin_untargeted_and_the_cross_entropy_to_the_target_targeted():
    logits = torch.tensor([[2.0, 5.0, -1.0], [0.5, 0.1, 0.4]])
    labels = torch.tensor([1, 0])
    assert torch.allclose(square_loss(logits, labels, None), torch.tensor([5.0 - 2.0, 0.5 - 0.4]))
    targets = torch.tensor([2, 1])
    hand = [
        math.log(sum(math.exp(v) for v in row)) - row[t]
        for row, t in zip(logits.tolist(), targets.tolist(), strict=True)
    ]
    assert torch.allclose(square_loss(logits, labels, targets), torch.tensor(hand))


# ---------------------------------------------------------------- against the analytic answer


def test_square_breaks_a_zero_gradient_model_that_pgd_cannot_move():
    # A linear model behind a rounding to 1/255 steps: its input gradient is exactly zero. Pixels and eps on the
    # 1/255 grid, so the vertex x + eps sign(w_j - w_y) is seen exactly, and every point kept has an adversarial
    # in its ball (analytic distance < eps / 2).
    linear, x = linear_case(400, (2, 4, 4), 3, seed=4)
    x = torch.round(x * 255) / 255
    eps = 8 / 255
    with torch.no_grad():
        y = linear(x).argmax(1)
    distance = hand_distance(linear, x, y, "linf")
    keep = (distance < eps / 2) & (distance > eps / 4)
    x, y = x[keep], y[keep]
    assert len(y) >= 10
    model = nn.Sequential(Round(), linear).eval()
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), y)
    pgd = PGD(eps=eps, steps=10).run(model, x, y)
    assert pgd.zero_gradient.all() and pgd.robust.all()  # no gradient: PGD stays at its random start
    square = Square(eps=eps, queries=200).run(model, x, y)
    assert not square.robust.any() and not square.zero_gradient.any()
    with torch.no_grad():  # broken, by the model's own answer on the kept images
        assert (model(square.adversarial).argmax(1) != y).all()
    assert hand_norm("linf", square.adversarial - x).max() <= eps + 1e-6


@pytest.mark.parametrize(
    "norm,shape,queries,cap",
    [("linf", (2, 4, 4), 300, 0.1), ("l2", (1, 8, 8), 500, 0.3)],
)
def test_on_a_linear_classifier_square_breaks_every_point_well_inside_eps_and_none_beyond_it(norm, shape, queries, cap):
    model, x = linear_case(60, shape, 3, seed=6)
    with torch.no_grad():
        y = model(x).argmax(1)
    distance = hand_distance(model, x, y, norm)
    eps = min(float(distance.quantile(0.6)), cap)
    inside, beyond = distance < eps / 2, distance > eps
    assert inside.sum() >= 10 and beyond.sum() >= 10  # both kinds of point are there
    result = Square(eps=eps, norm=norm, queries=queries).run(model, x, y)
    broken = ~result.robust
    assert broken[inside].all()  # a random search: it must find every point whose margin is well inside eps
    assert not broken[beyond].any()  # and can never break a point whose nearest boundary is beyond eps
    robust = int(result.robust.sum())
    assert int(beyond.sum()) <= robust <= int((distance >= eps / 2).sum())
    # the broken points are broken in plain float64 arithmetic too, inside the ball
    weight, bias = model[1].weight.detach().double(), model[1].bias.detach().double()
    logits = result.adversarial.flatten(1).double() @ weight.T + bias
    assert torch.equal(logits.argmax(1) != y, broken)
    assert hand_norm(norm, result.adversarial - x).max() <= eps * (1 + 1e-6)


def test_targeted_square_reaches_the_target_of_every_point_well_inside_eps():
    # Two classes: the target's region is one half-space, so its distance is the analytic one. The points of the
    # target class are left out; the others are pushed to it with the cross-entropy to the target. The boundary
    # passes through the gray image, so both classes have points.
    model, x = linear_case(80, (2, 4, 4), 2, seed=2)
    with torch.no_grad():
        model[1].bias.copy_(-0.5 * model[1].weight.sum(1))
        y = model(x).argmax(1)
    distance = hand_distance(model, x, y, "linf")
    attacked = y == 0
    eps = min(float(distance[attacked].quantile(0.6)), 0.1)
    inside, beyond = attacked & (distance < eps / 2), attacked & (distance > eps)
    assert inside.sum() >= 5 and beyond.sum() >= 5
    result = Square(eps=eps, target=1, queries=300).run(model, x, y)
    assert torch.equal(result.counted, attacked)
    reached = result.adversarial_prediction == 1
    assert reached[inside].all() and not reached[beyond].any()
    assert not result.robust[inside].any() and result.robust[beyond].all()


# ---------------------------------------------------------------- the ball, the box and the budget


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 0.5)])
def test_the_perturbation_stays_in_the_ball_and_the_box_even_where_the_box_clips(norm, eps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 4)).eval()
    x = torch.rand(24, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    x[:8] = (x[:8] > 0.5).float()  # black and white pixels: the box clips every shift toward it
    x[8:] = 0.3 + 0.4 * x[8:]
    with torch.no_grad():
        y = model(x).argmax(1)
    result = Square(eps=eps, norm=norm, queries=60, batch_size=10).run(model, x, y)
    norms = hand_norm(norm, result.adversarial - x)
    assert norms.max() <= eps * (1 + 1e-6) and result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    assert torch.allclose(result.perturbation_norm.double(), norms, rtol=1e-5, atol=1e-7)
    if norm == "linf":  # Algorithm 1 only ever sets a pixel to x - eps or x + eps (clipped to the box)
        adv = result.adversarial
        assert ((adv == (x - eps).clamp(0, 1)) | (adv == (x + eps).clamp(0, 1))).all()
    else:  # Algorithm 3 puts every proposal on the sphere: where the box clipped no pixel (none is 0 or 1), the
        # norm is eps
        unclipped = ((result.adversarial > 0) & (result.adversarial < 1)).flatten(1).all(1)
        assert unclipped.sum() >= 8 and not unclipped[:8].any()
        assert torch.allclose(norms[unclipped], torch.full_like(norms[unclipped], eps), rtol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_queries_are_counted_and_a_point_that_stands_uses_all_of_them(norm):
    # A constant model: nothing breaks it, so every point spends queries x restarts, plus the clean forward and the
    # final one of the base class; the model's own count says the same.
    constant = nn.Linear(36, 3)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    model = Counting(nn.Sequential(nn.Flatten(), constant))
    x, y = torch.rand(7, 1, 6, 6, generator=torch.Generator().manual_seed(0)), torch.zeros(7, dtype=torch.long)
    eps = 0.1 if norm == "linf" else 0.5
    result = Square(eps=eps, norm=norm, queries=13, restarts=3).run(model, x, y)
    assert result.robust.all() and model.images == result.gradient_evaluations == 7 * (13 * 3 + 2)
    # a model that breaks: the same count by the model, within the budget, and fewer as points leave when broken
    linear, x = linear_case(30, (1, 6, 6), 3, seed=3)
    with torch.no_grad():
        y = linear(x).argmax(1)
    model = Counting(linear)
    eps = float(hand_distance(linear, x, y, norm).median())  # about half the points can be broken
    result = Square(eps=eps, norm=norm, queries=50, restarts=2).run(model, x, y)
    assert model.images == result.gradient_evaluations < 30 * (50 * 2 + 2)
    assert 0 < int(result.robust.sum()) < 30


def test_square_takes_no_gradient_and_names_its_run():
    attack = Square(queries=10, restarts=2)
    assert not Square.uses_gradients and attack.run_label == "square"
    # no gradient steps: the base class's 1, as the attack check's labels say for a method without steps (its
    # rows carry the queries instead), so an ensemble's step count stays its gradient attacks'
    assert (attack.step_count, attack.restart_count) == (1, 2)
    spec = AttackSpec(method="square", eps=[0.1], queries=10, restarts=2)
    spec.validate()
    built = spec.build(0.1)
    assert isinstance(built, Square) and (built.queries, built.restarts) == (10, 2)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"queries": 0}, "queries 0; allowed: at least 1"),
        ({"queries": -5}, "queries -5; allowed: at least 1"),
        ({"restarts": 0}, "restarts 0; allowed: at least 1"),
        ({"p_init": 0.0}, "p_init 0; allowed: 0 < p_init <= 1"),
        ({"p_init": 1.5}, "p_init 1.5; allowed: 0 < p_init <= 1"),
    ],
)
def test_square_refuses_bad_settings_in_one_line_naming_the_value(settings, message):
    with pytest.raises(AuditError) as caught:
        Square(**settings)
    assert str(caught.value) == message
    if "queries" in settings:  # through the attack check's spec too
        with pytest.raises(AuditError) as caught:
            AttackSpec(method="square", eps=[0.1], **settings).validate()
        assert str(caught.value) == message


def test_square_refuses_the_settings_of_gradient_attacks():
    with pytest.raises(AuditError) as caught:
        AttackSpec(method="square", eps=[0.1], steps=5).validate()
    message = str(caught.value)
    assert message.startswith("method square searches random squares with forward passes only, so steps 5 would")
    assert "\n" not in message


class Recording(nn.Module):
    """A constant model (nothing it is shown improves the loss) that keeps every image it is shown."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes, self.seen = classes, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.arange(self.classes, 0, -1, dtype=torch.float32).expand(len(x), -1)


@pytest.mark.parametrize("channels", [1, 3])
def test_every_linf_query_changes_the_image_it_would_replace(channels):
    # The reference redraws a window's signs while they would leave the image as it is; with one channel and 1x1
    # windows, half of all proposals would otherwise be the kept image itself, a query wasted. Nothing improves the
    # constant model's loss, so the kept image is the start and every later query must differ from it, inside one
    # window of one side and at x +- eps.
    model = Recording(3)
    x = 0.25 + 0.5 * torch.rand(1, channels, 5, 5, generator=torch.Generator().manual_seed(0))
    eps = 0.1
    Square(eps=eps, queries=80).run(model, x, torch.zeros(1, dtype=torch.long))
    start, queries = model.seen[1], model.seen[2:-1]  # the clean forward first, the base class's final one last
    assert len(queries) == 79
    for i, query in enumerate(queries):
        changed = (query != start).any(1)[0]  # (H, W): the pixels some channel of which changed
        assert changed.any()
        side = min(max(round(math.sqrt(p_schedule(0.8, i, 80) * 25)), 1), 5)  # the window's side at iteration i
        rows, cols = changed.any(1).nonzero().view(-1), changed.any(0).nonzero().view(-1)
        assert rows.max() - rows.min() < side and cols.max() - cols.min() < side
        assert torch.allclose((query - x).abs(), torch.full_like(x, eps), atol=1e-6)


def test_an_evaluation_with_square_reports_its_own_figure_and_runs_no_gradient_sanity_checks():
    # The rows equal a direct run's figures at each eps (same seed, same batches); Square takes no steps, so the
    # evaluation adds no FGSM, double-steps or huge-eps runs.
    model, x = linear_case(30, (1, 6, 6), 3, seed=3)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = float(hand_distance(model, x, y, "linf").median())
    evaluation = evaluate_attack(model, x, y, AttackSpec(method="square", eps=[0.0, eps], queries=40, batch_size=16))
    assert evaluation.checks == [] and [row.eps for row in evaluation.rows] == [0.0, eps]
    direct = Square(eps=eps, queries=40, batch_size=16).run(model, x, y)
    row = evaluation.rows[1]
    assert row.robust_accuracy == pytest.approx(direct.robust_accuracy) and 0 < row.robust_accuracy < 1
    assert row.robust_accuracy_per_attack == {"square": pytest.approx(direct.robust_accuracy)}
    assert evaluation.rows[0].robust_accuracy == 1.0 and (row.steps, row.restarts) == (1, 1)
