"""Issue 11 item 5: tests generated from the registries. Every registered attack in every norm it takes, and every
registered norm geometry, checked for what the attack contract promises; each figure is recomputed in plain torch
(HAND_NORMS, DUAL_NORMS), not with the geometry under test."""

from dataclasses import fields, replace

import pytest
import torch
import torch.nn as nn

from auditnn.attacks import ATTACKS, FGSM, PGD
from auditnn.attacks.base import Perturbed, register_attack
from auditnn.attacks.evaluate import AttackSpec, evaluate_attack
from auditnn.attacks.norms import MAX_L2_EPS, NORMS, Norm, register_norm
from auditnn.errors import AuditError, InvariantError, allowed

# Per-sample norms of (N, D) tensors, written out by hand for every registered norm (a new norm must add its own).
HAND_NORMS = {"linf": lambda flat: flat.abs().amax(1), "l2": lambda flat: flat.pow(2).sum(1).sqrt()}
# The dual norms: the most a unit step in the norm can raise a linear function with gradient g is ||g||_dual.
DUAL_NORMS = {"linf": lambda flat: flat.abs().sum(1), "l2": lambda flat: flat.pow(2).sum(1).sqrt()}
PAIRS = [(name, norm) for name, cls in ATTACKS.items() for norm in cls.norms]
NOT_TAKEN = [(name, norm) for name, cls in ATTACKS.items() for norm in NORMS if norm not in cls.norms]
# A valid setting other than the default, for every AttackSpec field that some attack takes.
NON_DEFAULT = {
    "norm": "l2",
    "steps": 5,
    "restarts": 3,
    "step_size": 0.01,
    "target": "random",
    "batch_size": 8,
    "seed": 1,
    "loss": "dlr",
    "target_classes": 2,
    "queries": 50,
    "version": "plus",
}
# The generic runs below take each attack's defaults but these, which keep them fast on 40 tiny images (APGD's 100
# steps, APGD-T's 9 target classes and Square's 5000 queries are sized for real models); each attack gets those it
# takes.
QUICK = {"steps": 10, "target_classes": 2, "queries": 100}


def quick(name: str, **settings):
    """The attack `name` with the QUICK settings it takes, then `settings`."""
    cls = ATTACKS[name]
    return cls(**{**{k: v for k, v in QUICK.items() if k in cls.settings()}, **settings})


def hand_norm(norm: str, delta: torch.Tensor) -> torch.Tensor:
    return HAND_NORMS[norm](delta.flatten(1).double())


def radius(norm: str, scale: float) -> float:
    """The radius, in `norm`, of a shift of every pixel of a 1x6x6 image by `scale`: a like-for-like eps per norm."""
    return scale * float(hand_norm(norm, torch.ones(1, 36)))


@pytest.fixture(scope="module")
def case():
    """A random 4-class CNN (targeted DLR, APGD-T's loss, needs 4) on 40 random 6x6 images; every fifth label moved
    off the model's answer (clean 0.8), as test_attacks_unchanged.tiny_case does with 3 classes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 4))
    x = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4
    return model.eval(), x, y


def test_the_hand_formulas_cover_every_registered_norm_and_every_spec_setting():
    assert set(HAND_NORMS) == set(DUAL_NORMS) == set(NORMS) == {"linf", "l2"}
    taken = {name for cls in ATTACKS.values() for name in cls.settings()}
    assert set(NON_DEFAULT) == {f.name for f in fields(AttackSpec)} & taken - {"eps"}
    assert ("fgsm", "l2") in NOT_TAKEN and ("pgd", "l2") in PAIRS


# ---------------------------------------------------------------- every registered attack, in every norm it takes


@pytest.mark.parametrize("name,norm", PAIRS)
def test_at_eps_zero_every_attack_changes_nothing_and_robust_accuracy_is_clean_accuracy(case, name, norm):
    model, x, y = case
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    assert clean == pytest.approx(0.8)  # some points are wrong before the attack: they must not count as robust
    result = quick(name, eps=0.0, norm=norm, batch_size=16).run(model, x, y)
    assert torch.equal(result.adversarial, x) and not result.perturbation_norm.any()
    assert result.robust_accuracy == pytest.approx(clean) and result.clean_accuracy == pytest.approx(clean)
    row = evaluate_attack(model, x, y, AttackSpec(method=name, norm=norm, eps=[0.0], sanity=False)).rows[0]
    assert row.robust_accuracy == pytest.approx(clean) and row.success_rate == 0.0


@pytest.mark.parametrize("name,norm", PAIRS)
@pytest.mark.parametrize("scale", [0.02, 0.1, 0.5])
def test_every_attack_stays_in_its_ball_and_the_box_and_reports_the_norm_it_used(case, name, norm, scale):
    model, x, y = case
    eps = radius(norm, scale)
    result = quick(name, eps=eps, norm=norm, batch_size=16).run(model, x, y)
    norms = hand_norm(norm, result.adversarial - x)
    # it stayed in its ball, and used it (a minimum-norm attack uses as little of it as it can, but some)
    used = 0.0 if getattr(ATTACKS[name], "minimum_norm", False) else 0.5 * eps
    assert norms.max() <= eps * (1 + 1e-6) and norms.max() > used
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    assert torch.allclose(result.perturbation_norm.double(), norms, rtol=1e-5, atol=1e-7)
    assert result.robust_accuracy <= result.clean_accuracy


@pytest.mark.parametrize("name,norm", PAIRS)
def test_every_attack_is_deterministic_for_a_seed(case, name, norm):
    model, x, y = case
    target = None if getattr(ATTACKS[name], "picks_own_targets", False) else "random"  # APGD-T picks its own
    first, second = (
        quick(name, eps=radius(norm, 0.05), norm=norm, seed=7, target=target, batch_size=16).run(model, x, y)
        for _ in range(2)
    )
    assert torch.equal(first.adversarial, second.adversarial) and torch.equal(first.robust, second.robust)
    assert first.gradient_evaluations == second.gradient_evaluations
    assert target is None or torch.equal(first.targets, second.targets)


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize(
    "settings,message",
    [
        ({"eps": -0.1}, "eps -0.1 is outside [0, 1] for norm linf; allowed: 0 <= eps <= 1"),
        ({"eps": 1.5}, "eps 1.5 is outside [0, 1] for norm linf; allowed: 0 <= eps <= 1"),
        ({"norm": "l1"}, "norm 'l1' is unknown; allowed: linf or l2"),
        ({"target": "everything"}, "target 'everything' is unknown; allowed: a class index, random or least-likely"),
        ({"batch_size": 0}, "batch size 0; allowed: at least 1"),
    ],
)
def test_every_attack_refuses_bad_settings_in_one_line_naming_the_value(name, settings, message):
    with pytest.raises(AuditError) as caught:
        ATTACKS[name](**settings)
    assert str(caught.value) == message


@pytest.mark.parametrize("name,norm", PAIRS)
def test_every_attack_refuses_a_radius_past_its_norms_bound(name, norm):
    top = NORMS[norm].max_eps
    ATTACKS[name](eps=top, norm=norm)
    with pytest.raises(AuditError) as caught:
        ATTACKS[name](eps=2 * top, norm=norm)
    assert str(caught.value) == f"eps {2 * top:g} is outside [0, {top:g}] for norm {norm}; allowed: 0 <= eps <= {top:g}"


@pytest.mark.parametrize("name,norm", NOT_TAKEN)
def test_an_attack_refuses_a_norm_it_does_not_take_naming_the_attacks_that_do(name, norm):
    with pytest.raises(AuditError) as caught:
        ATTACKS[name](norm=norm)
    takers = [other for other, cls in ATTACKS.items() if norm in cls.norms]
    assert str(caught.value).startswith(f"method {name} takes norm ") and f"got '{norm}'" in str(caught.value)
    assert str(caught.value).endswith(f"use {allowed(takers)} for {norm}")


@pytest.mark.parametrize("name", ATTACKS)
def test_a_spec_passes_its_attack_exactly_the_settings_it_takes_and_refuses_the_rest(name):
    cls = ATTACKS[name]
    for setting, value in NON_DEFAULT.items():
        spec = AttackSpec(method=name, eps=[0.1], **{setting: value})
        if setting in cls.settings():
            if setting == "norm" and value not in cls.norms:
                continue  # the norm refusal has its own test
            if setting == "target" and getattr(cls, "picks_own_targets", False):
                with pytest.raises(
                    AuditError, match=f"^method {name} picks its own targets; allowed: leave target unset$"
                ):
                    spec.validate()
                continue
            spec.validate()
            assert getattr(spec.build(0.1), setting) == value
            continue
        with pytest.raises(AuditError) as caught:
            spec.validate()
        message = str(caught.value)
        assert (
            message.startswith(f"method {name} ")
            and f", so {setting} {value if isinstance(value, str) else format(value, 'g')} would be ignored; allowed: "
            in message
        )
        assert "\n" not in message
    built = AttackSpec(method=name, eps=[0.1, 0.2]).build(0.2)
    assert type(built) is cls and built.eps == 0.2


def test_the_fgsm_refusal_names_every_setting_fgsm_does_not_take():
    with pytest.raises(AuditError) as caught:
        AttackSpec(method="fgsm", eps=[0.1], steps=3, step_size=0.01).validate()
    assert str(caught.value) == (
        "method fgsm takes one step from the clean image, so steps 3, step_size 0.01 would "
        "be ignored; allowed: leave steps and step_size unset with fgsm, or method pgd"
    )


def test_each_attack_names_its_run_and_counts_its_steps():
    assert (FGSM().run_label, FGSM().step_count, FGSM().restart_count) == ("fgsm", 1, 1)
    assert (PGD(steps=7, restarts=3).run_label, PGD(steps=7).step_count, PGD(restarts=3).restart_count) == (
        "pgd-7",
        7,
        3,
    )
    assert PGD(steps=7, step_size=2 / 255).run_label == "pgd-7 step 2/255"


# ---------------------------------------------------------------- the contract of the base class


def test_a_subclass_that_overrides_run_is_refused_at_class_creation():
    with pytest.raises(TypeError, match="Sneaky overrides Attack.run, which is final"):

        class Sneaky(FGSM):
            def run(self, model, images, labels):
                return super().run(model, images, labels)


def test_an_attack_or_a_norm_registered_twice_is_refused():
    with pytest.raises(ValueError, match="attack 'pgd' is registered twice"):
        register_attack(type("Again", (PGD,), {}))
    with pytest.raises(ValueError, match="attack class Nameless needs a name and a description"):
        register_attack(type("Nameless", (PGD,), {"name": "nameless", "description": ""}))
    assert "nameless" not in ATTACKS
    with pytest.raises(ValueError, match="norm 'l2' is registered twice"):
        register_norm(type("Again", (type(NORMS["l2"]),), {}))
    assert type(NORMS["l2"]).__name__ != "Again"


def test_the_exit_check_catches_an_attack_that_leaves_its_ball(case):
    model, x, y = case

    class Overstep(FGSM):
        def _perturb(self, model, x, y, targets, generator) -> Perturbed:
            done = super()._perturb(model, x, y, targets, generator)
            return replace(done, adversarial=(x + 3 * (done.adversarial - x)).clamp(0, 1))

    with pytest.raises(InvariantError, match="left its linf ball"):
        Overstep(eps=0.05).run(model, x, y)


# ---------------------------------------------------------------- every registered norm geometry


@pytest.mark.parametrize("norm", NORMS)
def test_projection_is_the_nearest_point_of_the_ball_and_is_idempotent(norm):
    geometry, eps = NORMS[norm], 0.5
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(64, 3, 4, 4, generator=gen) * torch.rand(64, 1, 1, 1, generator=gen) * 2 * radius(norm, 0.1)
    inside = hand_norm(norm, delta) <= eps
    assert inside.any() and (~inside).any()
    once = geometry.project(delta, eps)
    assert torch.equal(once[inside], delta[inside])
    assert hand_norm(norm, once).max() <= eps * (1 + 1e-6)
    assert torch.allclose(geometry.project(once, eps), once, atol=1e-7)
    # the nearest point, by hand: Linf clips each pixel; L2 scales the whole perturbation back to the sphere
    nearest = {"linf": delta.clamp(-eps, eps), "l2": delta * eps / hand_norm("l2", delta).view(-1, 1, 1, 1).float()}
    assert torch.allclose(once[~inside], nearest[norm][~inside], atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_norm_is_per_sample(norm):
    delta = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(NORMS[norm].norm(delta).double(), hand_norm(norm, delta), rtol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_direction_has_unit_norm_and_attains_the_dual_norm_of_the_gradient(norm):
    geometry = NORMS[norm]
    grad = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    step = geometry.direction(grad)
    assert torch.allclose(hand_norm(norm, step), torch.ones(16, dtype=torch.float64), atol=1e-6)
    # <g, d> = ||g||_dual: no other unit step in this norm raises a linear loss with gradient g more
    gain = (grad * step).flatten(1).sum(1).double()
    assert torch.allclose(gain, DUAL_NORMS[norm](grad.flatten(1).double()), rtol=1e-5)
    assert torch.allclose(geometry.direction(grad, 0.3), 0.3 * step, atol=1e-6)
    assert not geometry.direction(torch.zeros(2, 3)).any()  # no gradient: no step, and no NaN


@pytest.mark.parametrize("norm", NORMS)
def test_random_start_lies_in_the_ball_and_reaches_its_edge(norm):
    eps = 0.25
    sample = NORMS[norm].random_start(torch.Size([2000, 3, 2, 2]), eps, torch.Generator().manual_seed(0))
    assert sample.shape == (2000, 3, 2, 2)
    norms = hand_norm(norm, sample)
    assert norms.max() <= eps * (1 + 1e-6) and norms.max() >= 0.99 * eps


def test_the_linf_random_start_is_uniform_in_each_pixel():
    # Each pixel uniform in [-eps, eps]: P(|v| <= t * eps) = t. 40000 pixels: the standard error of each share is at
    # most sqrt(0.25 / 40000) = 0.0025, so 0.01 is four standard errors.
    values = NORMS["linf"].random_start(torch.Size([20000, 2]), 0.5, torch.Generator().manual_seed(0)).abs()
    for t in (0.25, 0.5, 0.75):
        assert float((values <= t * 0.5).float().mean()) == pytest.approx(t, abs=0.01)


def test_the_l2_random_start_is_uniform_in_radius_in_two_dimensions():
    # For the uniform distribution in a d-ball, P(r <= t * eps) = t^d; with d = 2 the median radius is eps/sqrt(2).
    # 20000 draws: the sample median's standard error is 1 / (2 f(median) sqrt(n)) = 0.0025 eps (density f(r) = 2r),
    # so 0.01 is four standard errors.
    sample = NORMS["l2"].random_start(torch.Size([20000, 2]), 1.0, torch.Generator().manual_seed(0))
    radius_ = sample.norm(dim=1)
    assert radius_.max() <= 1.0 and abs(radius_.median().item() - 2**-0.5) < 0.01


def test_the_eps_bounds_of_the_norms():
    # Linf: a radius of 1 already lets every pixel reach either end of [0, 1]. L2: MAX_L2_EPS (pixel units) spans any
    # image up to about 33 megapixels (sqrt(3 x 1024 x 1024) = 1774 for one RGB megapixel); past it float32 overflows.
    assert NORMS["linf"].max_eps == 1.0 and NORMS["l2"].max_eps == MAX_L2_EPS == 1e4
    assert all(isinstance(geometry, Norm) for geometry in NORMS.values())


def test_a_run_brought_in_by_a_mixin_is_refused_too():
    """Second review of issue 11: the check looked at the class's own attributes only."""

    class Mixin:
        def run(self, model, images, labels):
            return None

    with pytest.raises(TypeError, match="Sneaky overrides Attack.run, which is final"):

        class Sneaky(Mixin, FGSM):
            pass
