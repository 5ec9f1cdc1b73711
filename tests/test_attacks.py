import pytest
import torch
import torch.nn as nn

from auditnn.attacks import FGSM, PGD, make_attack
from auditnn.attacks.evaluate import AttackSpec, evaluate_attack
from auditnn.errors import AuditError
from auditnn.report.schema import metric_row, validate_report


class Linear2(nn.Module):
    """Logits [0, w.x + b]: the optimal Linf attack is known in closed form."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(torch.tensor(b))

    def forward(self, x):
        z = x.flatten(1) @ self.w.flatten() + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


ATTACKS = [
    lambda eps: FGSM(eps=eps),
    lambda eps: PGD(eps=eps, steps=5),
    lambda eps: PGD(eps=eps * 8, norm="l2", steps=5),
    lambda eps: PGD(eps=eps, steps=5, restarts=2, target="random"),
]


def test_eps_zero_gives_clean_accuracy(digits_model):
    model, x, y = digits_model
    clean = float((model(x).argmax(1) == y).float().mean())
    for build in ATTACKS[:3]:
        result = build(0.0).run(model, x, y)
        assert result.robust_accuracy == pytest.approx(clean) and torch.equal(result.adversarial, x)


@pytest.mark.parametrize("index", range(len(ATTACKS)))
@pytest.mark.parametrize("eps", [2 / 255, 16 / 255])
def test_every_attack_stays_in_its_ball_and_the_box(digits_model, index, eps):
    model, x, y = digits_model
    attack = ATTACKS[index](eps)
    result = attack.run(model, x, y)
    delta = (result.adversarial - x).flatten(1)
    norms = delta.abs().amax(1) if attack.norm == "linf" else delta.norm(dim=1)
    assert norms.max() <= attack.eps + 1e-6
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    assert torch.isfinite(result.adversarial).all()


def test_pgd_is_never_weaker_than_fgsm_and_robust_accuracy_falls_with_eps(digits_model):
    model, x, y = digits_model
    previous = 1.0
    for eps in [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]:
        pgd = PGD(eps=eps, steps=10).run(model, x, y)
        fgsm = FGSM(eps=eps).run(model, x, y)
        assert pgd.robust_accuracy <= fgsm.robust_accuracy
        assert pgd.robust_accuracy <= previous
        previous = pgd.robust_accuracy
    assert previous < 0.5


def test_targeted_pgd_reaches_the_target_on_a_weak_model(digits_model):
    model, x, y = digits_model
    result = PGD(eps=0.3, steps=20, target=3).run(model, x, y)
    # Only points correct before the attack and not already of class 3 are attacked (and counted).
    attacked = (model(x).argmax(1) == y) & (y != 3)
    assert torch.equal(result.attacked, attacked) and result.left_out == int((y == 3).sum())
    assert (result.adversarial_prediction[attacked] == 3).float().mean() >= 0.95
    assert result.success_rate >= 0.95 and torch.equal(result.targets, torch.full_like(y, 3))


def test_restarts_are_scored_per_sample(digits_model):
    model, x, y = digits_model
    # One tiny step: the outcome is decided by the random start, so each restart is a fresh draw.
    one = PGD(eps=24 / 255, steps=1, step_size=1e-4, restarts=1).run(model, x, y)
    three = PGD(eps=24 / 255, steps=1, step_size=1e-4, restarts=3).run(model, x, y)
    assert not (three.robust & ~one.robust).any()  # a point robust over three restarts survived the first
    assert three.robust.sum() < one.robust.sum()  # and later restarts broke points the first did not


def test_mode_and_requires_grad_are_restored_and_batchnorm_is_frozen(digits_model):
    model, x, y = digits_model
    model.train()
    model.net[1].weight.requires_grad_(True)
    stats = model.net[1].running_mean.clone()
    PGD(eps=8 / 255, steps=3).run(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(model.net[1].running_mean, stats)  # BatchNorm ran in eval mode
    model.eval()


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.5)])
def test_early_exit_equals_the_full_run(digits_model, norm, eps):
    model, x, y = digits_model
    fast = PGD(eps=eps, norm=norm, steps=10, early_exit=True).run(model, x, y)
    full = PGD(eps=eps, norm=norm, steps=10, early_exit=False).run(model, x, y)
    assert torch.equal(fast.robust, full.robust)
    assert fast.gradient_evaluations < full.gradient_evaluations


def test_pgd_finds_the_closed_form_linf_optimum_of_a_linear_classifier():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 6, 6, generator=gen)
    x = 0.2 + 0.6 * torch.rand(64, 1, 6, 6, generator=gen)  # away from the box edges: the ball alone binds
    model = Linear2(w, 0.0)
    y = (model(x).argmax(1)).long()
    eps = 0.05
    result = PGD(eps=eps, steps=10, random_start=False).run(model, x, y)
    direction = torch.where(y == 1, -1.0, 1.0).view(-1, 1, 1, 1)
    optimum = x + direction * eps * w.sign()
    margin = (model(x)[:, 1]).abs() - eps * w.abs().sum()
    assert torch.equal(result.robust, margin > 0)
    # Robust points end at the optimum (the corner of the ball); broken ones keep the first iterate that broke them.
    assert result.robust.any() and (~result.robust).any()
    assert torch.allclose(result.adversarial[result.robust], optimum[result.robust], atol=1e-6)


def test_models_that_break_the_logits_contract_are_refused(digits_model):
    _, x, y = digits_model

    class Flat(nn.Module):
        def forward(self, x):
            return x.flatten(1).sum(1)

    class NaNs(nn.Module):
        def forward(self, x):
            return torch.full((len(x), 10), float("nan"))

    with pytest.raises(AuditError, match=r"shape \(100,\); allowed: logits of shape \(100, K\)"):
        PGD(eps=0.1).run(Flat(), x, y)
    with pytest.raises(AuditError, match="NaN"):
        FGSM(eps=0.1).run(NaNs(), x, y)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(eps=-0.1), "eps -0.1 is outside [0, 1]"),
        (dict(eps=1.5), "eps 1.5 is outside [0, 1]"),
        (dict(norm="l1"), "norm 'l1' is unknown"),
        (dict(steps=0), "steps 0; allowed: at least 1"),
        (dict(target="everything"), "target 'everything'"),
    ],
)
def test_bad_attack_settings_name_the_value(kwargs, needle):
    with pytest.raises(AuditError) as info:
        PGD(**kwargs)
    assert needle in str(info.value)


def test_target_class_out_of_range_is_refused(digits_model):
    model, x, y = digits_model
    with pytest.raises(AuditError, match="target class 12 is out of range; allowed: 0 .. 9"):
        make_attack("pgd", eps=0.1, target=12).run(model, x, y)


class Quantized(nn.Module):
    """Gradient masking by construction: rounding the input has zero gradient everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


def test_sanity_flags_catch_a_gradient_masked_model(digits_model):
    model, x, y = digits_model
    evaluation = evaluate_attack(Quantized(model), x, y, AttackSpec(eps=[0, 4 / 255, 8 / 255], steps=5))
    codes = {w["code"] for w in evaluation.warnings}
    assert {"zero_or_nan_gradients", "robust_at_huge_eps"} <= codes


def test_a_linear_model_raises_no_sanity_flag():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(200, 1, 6, 6, generator=gen)
    model = Linear2(torch.randn(1, 6, 6, generator=gen), 0.0)
    y = model(x).argmax(1)
    evaluation = evaluate_attack(model, x, y, AttackSpec(eps=[0, 0.01, 0.03, 0.1], steps=10))
    assert evaluation.warnings == []
    robust = [r.robust_accuracy for r in evaluation.rows]
    assert robust == sorted(robust, reverse=True) and robust[0] == 1.0


def test_without_early_exit_a_point_broken_mid_run_counts_as_broken_and_keeps_that_iterate():
    class Band(nn.Module):
        """Class 1 wins only for v in (0.56, 0.66): steps of 0.1 from 0.5 go 0.5 -> 0.6 (broken) -> 0.7 (not)."""

        def forward(self, x):
            v = x.flatten(1)[:, :1]
            return torch.cat([torch.zeros_like(v), 10 * (1 - (v - 0.61).abs() / 0.05)], dim=1)

    x = torch.full((1, 1, 1, 1), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    for early_exit, forwards in ((True, 1 + 2 + 1), (False, 1 + 3 + 1)):
        attack = PGD(eps=0.3, steps=2, step_size=0.1, restarts=2, random_start=False, early_exit=early_exit)
        result = attack.run(Band(), x, y)
        assert not result.robust.item() and result.adversarial.item() == pytest.approx(0.6)
        # clean forward + one restart's iterates + the final scoring forward: the second restart never runs
        assert result.gradient_evaluations == forwards


def test_a_report_row_with_a_bad_target_is_refused_naming_every_allowed_target():
    row = metric_row("robustness", "robust_accuracy", 0.5, method="pgd", target=1.5)
    report = {
        "command": "attack",
        "run_id": "r",
        "config": {},
        "environment": {},
        "seed": 0,
        "results": {},
        "metrics": [row],
        "schema": "auditnn.report",
        "schema_version": 1,
    }
    with pytest.raises(AuditError) as caught:
        validate_report(report, "report 'r.json'")
    assert str(caught.value) == (
        "report 'r.json': key 'metrics[0].target' is 1.5; allowed: a class index, 'random', 'least-likely' or null"
    )


def test_fgsm_refuses_the_pgd_settings_it_would_ignore():
    AttackSpec(method="fgsm", eps=[0.1]).validate()
    AttackSpec(method="pgd", eps=[0.1], steps=5, restarts=3, step_size=0.01).validate()
    with pytest.raises(AuditError) as caught:
        AttackSpec(method="fgsm", eps=[0.1], restarts=3, step_size=0.01).validate()
    assert str(caught.value) == (
        "method fgsm takes one step from the clean image, so restarts 3, step_size 0.01 would "
        "be ignored; allowed: leave restarts and step_size unset with fgsm, or method pgd"
    )
