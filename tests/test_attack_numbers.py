"""Issue 9: every figure the attacks report, recomputed a second way (closed forms on linear models, hand-counted
tiny examples, per-sample masks combined by hand)."""

import pytest
import torch
import torch.nn as nn
from test_attacks import Linear2

from auditnn.attacks import FGSM, PGD
from auditnn.attacks.evaluate import AttackSpec, evaluate_attack
from auditnn.attacks.norms import NORMS
from auditnn.attacks.patch import PatchConfig, fit_patch, optimize_patch, patch_split
from auditnn.errors import AuditError
from auditnn.subject import EvalData


class NearestCentre(nn.Module):
    """One pixel x; class k wins when x is nearest to centre k (0.2, 0.5, 0.8): boundaries at 0.35 and 0.65."""

    centres = torch.tensor([0.2, 0.5, 0.8])

    def forward(self, x):
        return -100 * (x.flatten(1)[:, :1] - self.centres) ** 2


def pixels(*values: float) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1)


# ---------------------------------------------------------------- item 2: targeted attacks count the right points


@pytest.mark.parametrize("method,norm", [("fgsm", "linf"), ("pgd", "linf"), ("pgd", "l2")])
@pytest.mark.parametrize("target", [None, 3, "random", "least-likely"])
def test_at_eps_zero_robust_accuracy_is_clean_accuracy_and_nothing_succeeds(digits_model, method, norm, target):
    model, x, y = digits_model
    spec = AttackSpec(method=method, norm=norm, eps=[0.0], target=target, sanity=False)
    row = evaluate_attack(model, x, y, spec).rows[0]
    with torch.no_grad():
        logits = model(x)
    chosen = {None: y + 1, 3: torch.full_like(y, 3), "least-likely": logits.argmin(1)}.get(target)
    counted = torch.ones_like(y, dtype=torch.bool) if target is None or target == "random" else chosen != y
    clean = float((logits.argmax(1) == y)[counted].float().mean())
    assert 0.2 < clean < 1.0  # some points are wrong before the attack: they must not count as robust
    assert row.robust_accuracy == pytest.approx(clean) and row.clean_accuracy == pytest.approx(clean)
    assert row.success_rate == 0.0
    assert row.left_out == int((~counted).sum()) and row.n == int(counted.sum())
    if target == 3:
        assert row.left_out == int((y == 3).sum()) > 0


@pytest.mark.parametrize(
    "build",
    [lambda: FGSM(eps=0.1, target=2), lambda: PGD(eps=0.1, steps=5, step_size=0.05, random_start=False, target=2)],
    ids=["fgsm", "pgd"],
)
def test_targeted_figures_hand_counted(build):
    x = pixels(0.6, 0.45, 0.5, 0.9, 0.7, 0.2, 0.3, 0.6, 0.1)
    y = torch.tensor([1, 1, 1, 2, 2, 0, 0, 0, 1])
    # by hand, target 2 (reached when x + 0.1 > 0.65):
    #   0.6/1 correct, reaches 2: broken        0.45/1, 0.5/1 correct, cannot: robust
    #   0.9/2, 0.7/2 label is the target: left out
    #   0.2/0 correct: robust   0.3/0 correct, moves to class 1 but not to 2: robust
    #   0.6/0 wrong before (predicted 1): not robust, not attacked   0.1/1 wrong before (predicted 0): not robust
    result = build().run(NearestCentre(), x, y)
    assert result.left_out == 2
    assert result.robust[result.counted].tolist() == [False, True, True, True, True, False, False]
    assert result.clean_accuracy == pytest.approx(5 / 7)
    assert result.robust_accuracy == pytest.approx(4 / 7)
    assert result.success_rate == pytest.approx(1 / 5)  # over the 5 counted points correct before the attack


def test_a_target_that_every_label_already_has_is_refused():
    x, y = pixels(0.6, 0.7), torch.tensor([1, 1])
    with pytest.raises(AuditError, match="target 1: every image's label is its target"):
        FGSM(eps=0.1, target=1).run(Linear2(torch.ones(1, 1, 1), -0.5), x, y)


def test_untargeted_success_is_counted_over_the_points_correct_before_the_attack():
    model = Linear2(torch.ones(1, 1, 1), -0.5)  # class 1 when x > 0.5
    x = pixels(0.55, 0.8, 0.3, 0.45, 0.1, 0.2, 0.9)
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    # correct: 0.55/1 (broken at eps 0.1), 0.8/1, 0.45/0 (broken), 0.1/0, 0.2/0; wrong: 0.3/1, 0.9/0
    result = FGSM(eps=0.1).run(model, x, y)
    assert result.robust.tolist() == [False, True, False, False, True, True, False]
    assert result.clean_accuracy == pytest.approx(5 / 7) and result.robust_accuracy == pytest.approx(3 / 7)
    assert result.success_rate == pytest.approx(2 / 5)  # not 2 / 7, not 4 / 7


# ---------------------------------------------------------------- closed forms on a linear model


def linear_case(seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 6, 6, generator=gen)
    x = 0.3 + 0.4 * torch.rand(64, 1, 6, 6, generator=gen)  # away from the box edges: the ball alone binds
    model = Linear2(w, 0.0)
    with torch.no_grad():
        z = model(x)[:, 1]
    y = (z > 0).long()
    away = torch.where(y == 1, -1.0, 1.0).view(-1, 1, 1, 1)  # the direction that lowers the label's margin
    return model, w, x, y, z, away


def test_fgsm_takes_one_signed_step_of_eps_against_the_label():
    model, w, x, y, z, away = linear_case(0)
    eps = 0.03
    result = FGSM(eps=eps).run(model, x, y)
    expected = x + away * eps * w.sign()
    assert torch.allclose(result.adversarial, expected, atol=1e-6)
    assert torch.equal(result.robust, z.abs() > eps * w.abs().sum())
    assert result.robust.any() and (~result.robust).any()


def test_l2_pgd_steps_along_the_normalized_gradient_to_the_closed_form_optimum():
    model, w, x, y, z, away = linear_case(1)
    eps = 0.2
    result = PGD(eps=eps, norm="l2", steps=10, random_start=False).run(model, x, y)
    # The L2 optimum of a linear margin: eps along -w / ||w||; the margin shrinks by eps * ||w||_2.
    robust = z.abs() > eps * w.norm()
    assert torch.equal(result.robust, robust) and robust.any() and (~robust).any()
    optimum = x + away * eps * w / w.norm()
    assert torch.allclose(result.adversarial[robust], optimum[robust], atol=1e-5)
    # a sign step projected onto the L2 ball would end elsewhere and break fewer points:
    assert (eps * w.abs().sum() / w.numel() ** 0.5) < eps * w.norm()


def test_the_l2_random_start_is_uniform_in_a_100_dimensional_ball():
    # P(r <= t * eps) = t^d: in d = 100 the radii crowd near eps (median 0.5^(1/100) = 0.9931 eps).
    eps = 2.0
    sample = NORMS["l2"].random_start(torch.Size([20000, 1, 10, 10]), eps, torch.Generator().manual_seed(0))
    radius = sample.flatten(1).norm(dim=1)
    assert radius.max() <= eps * (1 + 1e-6)
    for t in (0.98, 0.99, 0.995):
        assert float((radius <= t * eps).float().mean()) == pytest.approx(t**100, abs=0.015)


# ---------------------------------------------------------------- item 7: the headline is the per-sample worst case


def test_the_headline_robust_accuracy_is_the_worst_case_over_every_run_at_that_eps(digits_model):
    model, x, y = digits_model
    spec = AttackSpec(eps=[0.0, 4 / 255, 8 / 255], steps=5)
    evaluation = evaluate_attack(model, x, y, spec)
    pgd = {eps: PGD(eps=eps, steps=5).run(model, x, y).robust for eps in spec.eps}
    fgsm = {eps: FGSM(eps=eps).run(model, x, y).robust for eps in spec.eps[1:]}
    doubled = PGD(eps=8 / 255, steps=10).run(model, x, y).robust
    by_hand = {0.0: pgd[0.0], 4 / 255: pgd[4 / 255] & fgsm[4 / 255], 8 / 255: pgd[8 / 255] & fgsm[8 / 255] & doubled}
    # the case worth testing: some point survives PGD but falls to another run
    assert (pgd[8 / 255] & ~by_hand[8 / 255]).any()
    for row in evaluation.rows:
        assert row.robust_accuracy == pytest.approx(by_hand[row.eps].float().mean().item())
        own = row.robust_accuracy_per_attack
        assert own["pgd-5"] == pytest.approx(pgd[row.eps].float().mean().item())
        if row.eps > 0:
            assert own["fgsm"] == pytest.approx(fgsm[row.eps].float().mean().item())
    top = evaluation.rows[-1]
    assert set(top.robust_accuracy_per_attack) == {"pgd-5", "fgsm", "pgd-10"}
    assert top.robust_accuracy_per_attack["pgd-10"] == pytest.approx(doubled.float().mean().item())
    clean_correct = model(x).argmax(1) == y
    assert top.success_rate == pytest.approx(float((~by_hand[8 / 255])[clean_correct].float().mean()))


# ---------------------------------------------------------------- item 9: non-finite input gradients


class SqrtFirst(nn.Module):
    """sqrt preprocessing: the input gradient is infinite (or NaN) wherever a pixel is exactly 0."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.sqrt())


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 1.0)])
def test_non_finite_gradients_are_zeroed_and_flagged_and_both_norms_finish(digits_model, norm, eps):
    model, x, y = digits_model
    wrapped = SqrtFirst(model)
    probe = x[:4].clone().requires_grad_(True)
    wrapped(probe).sum().backward()
    assert not torch.isfinite(probe.grad).all()  # the case: digits have black pixels
    evaluation = evaluate_attack(wrapped, x, y, AttackSpec(norm=norm, eps=[0.0, eps], steps=5, sanity=False))
    assert "zero_or_nan_gradients" in {w["code"] for w in evaluation.warnings}
    clean, attacked = evaluation.rows
    assert attacked.zero_gradient_share > 0.5
    assert attacked.robust_accuracy < clean.robust_accuracy  # the finite entries still steer the attack


def test_fgsm_leaves_pixels_with_an_infinite_gradient_where_they_are():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(1, 6, 6, generator=gen)
    x = 0.3 + 0.4 * torch.rand(16, 1, 6, 6, generator=gen)
    x[:, :, :2] = 0.0  # black rows: d sqrt(x) / dx is infinite there
    with torch.no_grad():
        z = x.sqrt().flatten(1) @ w.flatten()
        model = SqrtFirst(Linear2(w, -float(z.median()) - 1e-3))  # about half the points on each side
        y = model(x).argmax(1)
    assert 0 < y.sum() < len(y)
    eps = 0.05
    result = FGSM(eps=eps).run(model, x, y)
    away = torch.where(y == 1, -1.0, 1.0).view(-1, 1, 1, 1)
    # sqrt is increasing, so the sign of the gradient is the sign of w where it is finite; 0 (no move) elsewhere
    expected = torch.where(x > 0, x + away * eps * w.sign(), x)
    assert torch.allclose(result.adversarial, expected, atol=1e-6)
    assert result.zero_gradient.all()


# ---------------------------------------------------------------- item 12: the huge-eps check says what it checks


class Brightness(nn.Module):
    """Class 1 when the mean pixel exceeds 0.25: a bright image stays bright at Linf 0.5 (its mean falls by at
    most 0.5), so the images of the class given to mid-gray are truly robust there."""

    def forward(self, x):
        z = 20 * (x.flatten(1).mean(1) - 0.25)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def test_the_huge_eps_check_flags_only_points_that_mid_gray_provably_breaks():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([0.9 + 0.1 * torch.rand(20, 1, 4, 4, generator=gen), 0.1 * torch.rand(20, 1, 4, 4, generator=gen)])
    y = torch.cat([torch.ones(20), torch.zeros(20)]).long()
    evaluation = evaluate_attack(Brightness(), x, y, AttackSpec(eps=[0.0, 0.05], steps=5))
    huge = next(c for c in evaluation.checks if c["check"] == "huge_eps")
    assert huge["robust_accuracy"] == pytest.approx(0.5)  # the bright half is robust for real
    assert huge["gray_class"] == 1 and huge["robust_but_broken_by_gray"] == 0.0
    assert "robust_at_huge_eps" not in {w["code"] for w in evaluation.warnings}


# ---------------------------------------------------------------- patches: success over non-target images


class MeanLevel(nn.Module):
    """Class by the mean pixel, nearest of 0.9 (class 0), 0.2 (class 1), 0.6 (class 2): a 2x2 patch on a 20x20
    image moves the mean by at most 0.01, so patched predictions equal clean ones."""

    centres = torch.tensor([0.9, 0.2, 0.6])

    def forward(self, x):
        return -100 * (x.flatten(1).mean(1, keepdim=True) - self.centres) ** 2


def test_patch_success_is_counted_over_the_images_not_of_the_target_class():
    values = [0.9, 0.9, 0.2, 0.2, 0.2, 0.2, 0.9, 0.6, 0.6, 0.9]
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    x = torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, 20, 20).contiguous()
    result = optimize_patch(MeanLevel(), x, labels, x, labels, PatchConfig(size=0.1, target=0, steps=2, batch_size=4))
    # by hand: 7 images not of class 0; of them the 0.9 ones (label 1 and label 2) go to class 0
    assert result.target_success_rate == pytest.approx(2 / 7)  # not 4 / 10, not 2 / 3
    assert result.noise_target_success_rate == pytest.approx(2 / 7)
    assert result.accuracy_clean == pytest.approx(7 / 10) and result.accuracy_with_patch == pytest.approx(7 / 10)


# ---------------------------------------------------------------- item 11: a patch fits and scores on one kind of image


def test_on_a_controlled_dataset_the_patch_fits_and_scores_on_stamp_free_images():
    stamped, clean = torch.ones(12, 1, 4, 4), torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    data = EvalData(
        stamped, torch.arange(12) % 2, clean, torch.arange(10) % 2, ["a", "b"], {"data": "folder", "test": "test_clean"}
    )
    fit_x, _, held_x, _ = patch_split(data, seed=0)
    assert len(fit_x) == 5 and len(held_x) == 5
    together = torch.cat([fit_x, held_x]).flatten(1)
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, clean.flatten(1).tolist()))
    result = fit_patch(Linear2(torch.ones(1, 4, 4), -8.0), data, PatchConfig(size=0.5, target=1, steps=2), seed=0)
    assert "stamp-free" in result.images and "half" in result.images
