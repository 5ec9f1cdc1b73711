"""Issue 13: the AutoAttack ensemble. Figures recomputed a second way: the analytic minimal perturbation of a linear
classifier, hand counts of which member broke which point, and masked copies of one function."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from helpers import assert_usage_error, run_cli

from auditnn.attacks import ATTACKS
from auditnn.attacks.autoattack import VERSIONS
from auditnn.attacks.evaluate import MASKING_WARNINGS, AttackSpec, evaluate_attack
from auditnn.errors import AuditError

FAST = {"steps": 20, "queries": 300}  # the members' budgets, small enough for a test, ample on 16 pixels


def linear_case(n: int = 48, classes: int = 4, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear classifier on 1x4x4 images with pixels in [0.3, 0.7] (every ball of radius <= 0.3 lies inside the
    box), labels its own answers (all correct)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, classes)).eval()
    x = 0.3 + 0.4 * torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def linf_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The smallest Linf perturbation that changes a linear classifier's answer, per point (inside the box):
    min over j != y of (z_y - z_j) / ||w_y - w_j||_1."""
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    z = x.flatten(1) @ weight.T + bias
    margins = z.gather(1, y[:, None]) - z  # (n, K)
    dual = (weight[y][:, None, :] - weight[None, :, :]).abs().sum(-1)  # (n, K): ||w_y - w_j||_1
    ratio = margins / dual.clamp_min(1e-12)
    ratio[torch.arange(len(y)), y] = float("inf")
    return ratio.min(1).values


class Scaled(nn.Module):
    """The same function with logits x `scale`: cross-entropy saturates, its gradient underflows to zero."""

    def __init__(self, inner: nn.Module, scale: float) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale


class Rounded(nn.Module):
    """The same function on the input rounded to 1/`levels` steps: its input gradient is exactly zero."""

    def __init__(self, inner: nn.Module, levels: int) -> None:
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * self.levels) / self.levels)


def test_the_ensemble_matches_the_analytic_count_and_says_who_broke_what():
    model, x, y = linear_case()
    distance = linf_distance(model, x, y)
    eps = [0.02, 0.05]
    spec = AttackSpec(method="autoattack", eps=eps, batch_size=16, **FAST)
    evaluation = evaluate_attack(model, x, y, spec)
    for row, e in zip(evaluation.rows, eps, strict=True):
        analytic = float((distance > e).float().mean())
        assert 0 < analytic < 1, "the case must have points on both sides"
        assert row.robust_accuracy == pytest.approx(analytic, abs=1e-7)
        assert set(row.broken_by_attack) == {"apgd-ce", "apgd-t", "fab-t", "square"}
        assert sum(row.broken_by_attack.values()) == round((1 - analytic) * len(y))  # each broken point once
    assert "black_box_beats_white_box" not in [w["code"] for w in evaluation.warnings]


def test_masked_copies_of_one_function_get_the_same_robust_accuracy_and_the_masking_is_named():
    model, x, y = linear_case(seed=1)
    eps = [0.05]
    spec = AttackSpec(method="autoattack", eps=eps, batch_size=48, **FAST)
    plain = evaluate_attack(model, x, y, spec).rows[0].robust_accuracy
    scaled = evaluate_attack(Scaled(model, 1e4), x, y, spec)
    assert abs(scaled.rows[0].robust_accuracy - plain) <= 0.02  # within 2 points: DLR does not see the scale
    rounded = evaluate_attack(Rounded(model, 255), x, y, spec)
    codes = [w["code"] for w in rounded.warnings]
    assert "zero_or_nan_gradients_in_ensemble" in codes and "black_box_beats_white_box" in codes
    # the gate's view: the ensemble's zero gradients are not a verdict on its figure, Square beating them is
    assert (
        "zero_or_nan_gradients_in_ensemble" not in MASKING_WARNINGS and "black_box_beats_white_box" in MASKING_WARNINGS
    )
    assert not {w["code"] for w in scaled.warnings} & MASKING_WARNINGS  # the scaled model's figure is trustworthy
    row = rounded.rows[0]
    assert row.broken_by_attack["square"] > 0 and row.broken_by_attack["apgd-ce"] == 0
    pgd = evaluate_attack(Rounded(model, 255), x, y, AttackSpec(eps=eps, steps=20, sanity=False)).rows[0]
    assert row.robust_accuracy < pgd.robust_accuracy  # the ensemble breaks what PGD cannot


def test_every_version_names_members_that_exist_and_rand_refuses_without_its_expectation():
    for version, members in VERSIONS.items():
        for _, method, _ in members:
            assert method in ATTACKS, (version, method)
    ATTACKS["autoattack"](version="plus")
    with pytest.raises(AuditError) as caught:
        ATTACKS["autoattack"](version="fancy")
    assert str(caught.value) == "version 'fancy' is unknown; allowed: standard, plus or rand"


def test_the_attack_command_runs_autoattack_and_shows_a_column_per_member(tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "attack", "--method", "autoattack", "--eps", "0,8/255", "--steps", "5", "--queries", "50",
        "--model", "mlp", "--width", "16", "--epochs", "1", "--test-per-class", "3", "--device", "cpu",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, err
    summary = (tmp_path / "out" / "summary.md").read_text()
    for column in ("broken by apgd-ce", "broken by apgd-t", "broken by fab-t", "broken by square"):
        assert column in summary, column
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["results"]["attack"]["rows"]
    top = rows[-1]
    broken = round((top["clean_accuracy"] - top["robust_accuracy"]) * 30)
    assert sum(top["broken_by_attack"].values()) == broken


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--method", "autoattack", "--version", "fancy"], ["version 'fancy' is unknown", "allowed: standard"]),
        (["--method", "apgd-t", "--target-classes", "0"], ["target classes 0", "allowed:"]),
        (["--method", "square", "--queries", "0"], ["queries 0", "allowed:"]),
        (["--method", "pgd", "--queries", "50"], ["queries 50 would be ignored"]),
        (
            ["--method", "autoattack", "--target", "3"],
            ["method autoattack picks its own targets", "allowed: leave target unset"],
        ),
    ],
)
def test_bad_autoattack_settings_exit_2_in_one_line(tmp_path, capsys, args, needles):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "attack", *args, "--device", "cpu", "--out", str(out))
    assert_usage_error(code, err, *needles)
    assert not out.exists()


def test_expectation_over_transformation_averages_passes_and_the_rand_version_runs():
    """On a deterministic model the average of k equal gradients is that gradient: the same images, k times the
    passes (the counting is by hand: each gradient is k forward+backward passes of every active point)."""
    model, x, y = linear_case(n=12)
    one = ATTACKS["apgd"](eps=0.05, steps=5).run(model, x, y)
    four = ATTACKS["apgd"](eps=0.05, steps=5, eot=4).run(model, x, y)
    assert torch.equal(one.adversarial, four.adversarial) and torch.equal(one.robust, four.robust)
    assert four.gradient_evaluations > one.gradient_evaluations
    with pytest.raises(AuditError, match="^eot 0; allowed: at least 1 pass per gradient$"):
        ATTACKS["apgd"](eot=0)
    spec = AttackSpec(method="autoattack", version="rand", eps=[0.05], steps=5, batch_size=16)
    row = evaluate_attack(model, x, y, spec).rows[0]
    assert set(row.broken_by_attack) == {"apgd-ce", "apgd-dlr"}
    analytic = float((linf_distance(model, x, y) > 0.05).float().mean())
    assert row.robust_accuracy >= analytic - 1e-7  # an attack never breaks a point that cannot be broken


class Noisy(nn.Module):
    """A model with randomness: its answer on one image may change from one forward pass to the next."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        return logits + 0.3 * logits.std() * torch.randn_like(logits)


def test_on_a_random_model_the_members_counts_still_add_up_to_the_points_broken():
    """The review's case: the final forward pass (which decides the figure) found points broken that no member's own
    pass did; they are counted as unattributed, so the columns still sum to the points broken."""
    model, x, y = linear_case(n=40, seed=2)
    torch.manual_seed(0)
    spec = AttackSpec(method="autoattack", eps=[2 / 255, 8 / 255], batch_size=40, steps=3, queries=30)
    for row in evaluate_attack(Noisy(model), x, y, spec).rows:
        broken = round((row.clean_accuracy - row.robust_accuracy) * row.n)
        assert sum(row.broken_by_attack.values()) == broken


def test_a_model_with_too_few_classes_is_refused_before_any_work(monkeypatch):
    from auditnn.attacks.base import Attack

    model, x, y = linear_case(classes=3)
    calls = []
    original = Attack.attack_batch
    monkeypatch.setattr(Attack, "attack_batch", lambda self, *a: calls.append(1) or original(self, *a))
    for spec in (
        AttackSpec(method="autoattack", eps=[1 / 255, 1.0], batch_size=8, **FAST),
        AttackSpec(method="apgd-t", eps=[0.1], batch_size=8),
        AttackSpec(method="fab", eps=[0.1], target_classes=5, batch_size=8),
    ):
        with pytest.raises(AuditError, match="classes"):
            evaluate_attack(model, x, y, spec)
    assert calls == []


def test_an_audit_records_the_batch_size_of_each_attack_check(tmp_path, capsys):
    audit = tmp_path / "a.toml"
    audit.write_text(
        '[model]\nsource = "mlp"\nwidth = 16\nepochs = 1\n[data]\ntest_per_class = 3\n[run]\ndevice = "cpu"\n'
        '[[check]]\nkind = "attack"\nname = "a"\neps = "2/255"\nsteps = 2\nmin_robust_accuracy = 0.0\n'
        'allow_warnings = ["more_steps_lower_robust_accuracy", "more_steps_raise_robust_accuracy", '
        '"pgd_weaker_than_fgsm", "robust_at_huge_eps"]\n'
        '[[check]]\nkind = "attack"\nname = "b"\nmethod = "fgsm"\neps = "2/255"\nmin_robust_accuracy = 0.0\n'
    )
    code, out, err = run_cli(capsys, "audit", str(audit), "--out", str(tmp_path / "out"))
    assert code in (0, 1), err
    batches = json.loads((tmp_path / "out" / "report.json").read_text())["results"]["attack"]["batches"]
    assert set(batches) == {"a", "b"} and all(b["size"] == 512 and b["chosen_by"] == "upper" for b in batches.values())
