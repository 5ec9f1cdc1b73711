"""Issue 11 item 5: the attack refactor changes no figure. Every number below was computed on the code before it
(commit e0bc266, CPU, torch 2.14.1). The same seed must give the same random draws in the same order, so the same
figures; they are compared to a relative 1e-6, not bit for bit, because the last float32 bits of a reduction (an L2
norm) differ between CPUs (AVX-512 and AVX2 kernels sum in another order): a changed random draw, step or order of runs
moves them by orders of magnitude more. Counts are compared exactly."""

import math
from typing import Any

import torch
import torch.nn as nn

from auditnn.attacks import FGSM, PGD
from auditnn.attacks.evaluate import AttackSpec, evaluate_attack


def tiny_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A random 3-class CNN on 40 random 6x6 images; every fifth label moved off the model's answer (clean 0.8)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    x = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 3
    return model.eval(), x, y


# batch size 16: three batches per run, so the per-batch random streams are covered too
SPECS = {
    "pgd_linf": AttackSpec(eps=[0.0, 0.02, 0.05], steps=5, batch_size=16),
    "pgd_l2": AttackSpec(norm="l2", eps=[0.0, 0.1, 0.3], steps=5, batch_size=16),
    "fgsm": AttackSpec(method="fgsm", eps=[0.0, 0.02, 0.05], batch_size=16),
    "targeted_restarts": AttackSpec(
        eps=[0.0, 0.05, 0.1], steps=4, restarts=2, step_size=0.02, target="random", batch_size=16
    ),
    "l2_least_likely": AttackSpec(norm="l2", eps=[0.2], steps=3, restarts=2, target="least-likely", batch_size=16),
}
BUILDS = {
    "fgsm": lambda: FGSM(eps=0.03, batch_size=16),
    "pgd_linf": lambda: PGD(eps=0.03, steps=6, restarts=2, batch_size=16),
    "pgd_l2": lambda: PGD(eps=0.2, norm="l2", steps=6, restarts=2, batch_size=16),
    "pgd_l2_full": lambda: PGD(eps=0.2, norm="l2", steps=6, restarts=2, early_exit=False, seed=3),
    "pgd_target": lambda: PGD(eps=0.05, steps=4, target=1, random_start=False),
}

# name -> (rows: (robust accuracy, success rate, mean perturbation, max perturbation, per-attack figures),
#          robust accuracy of each sanity check, warning codes, sum of the example adversarial pixels)
EVALUATIONS = {
    "pgd_linf": (
        [
            (0.800000011920929, 0.0, 0.0, 0.0, {"pgd-5": 0.800000011920929}),
            (
                0.4000000059604645,
                0.5,
                0.019955120980739594,
                0.02000001072883606,
                {"pgd-5": 0.4000000059604645, "fgsm": 0.4000000059604645},
            ),
            (
                0.20000000298023224,
                0.75,
                0.04979425296187401,
                0.050000011920928955,
                {"pgd-5": 0.20000000298023224, "fgsm": 0.20000000298023224, "pgd-10": 0.20000000298023224},
            ),
        ],
        [0.4000000059604645, 0.20000000298023224, 0.20000000298023224, 0.0],
        [],
        137.55921573750675,
    ),
    "pgd_l2": (
        [
            (0.800000011920929, 0.0, 0.0, 0.0, {"pgd-5": 0.800000011920929}),
            (0.4000000059604645, 0.5, 0.09866256266832352, 0.10000002384185791, {"pgd-5": 0.4000000059604645}),
            (0.125, 0.84375, 0.29487213492393494, 0.30000004172325134, {"pgd-5": 0.125, "pgd-10": 0.125}),
        ],
        [0.125, 0.0],
        [],
        137.22190447710454,
    ),
    "fgsm": (
        [
            (0.800000011920929, 0.0, 0.0, 0.0, {"fgsm": 0.800000011920929}),
            (0.4000000059604645, 0.5, 0.02000001072883606, 0.02000001072883606, {"fgsm": 0.4000000059604645}),
            (0.20000000298023224, 0.75, 0.050000011920928955, 0.050000011920928955, {"fgsm": 0.20000000298023224}),
        ],
        [],
        [],
        137.79541655257344,
    ),
    "targeted_restarts": (
        [
            (0.800000011920929, 0.0, 0.0, 0.0, {"pgd-4 step 0.02": 0.800000011920929}),
            (0.375, 0.53125, 0.04991665855050087, 0.050000011920928955, {"pgd-4 step 0.02": 0.375, "fgsm": 0.375}),
            (
                0.17499999701976776,
                0.78125,
                0.09957339614629745,
                0.10000002384185791,
                {
                    "pgd-4 step 0.02": 0.2750000059604645,
                    "fgsm": 0.17499999701976776,
                    "pgd-8 step 0.02": 0.17499999701976776,
                },
            ),
        ],
        [0.375, 0.17499999701976776, 0.17499999701976776],
        ["pgd_weaker_than_fgsm", "more_steps_lower_robust_accuracy"],
        137.0742432922125,
    ),
    "l2_least_likely": (
        [
            (
                0.6857143044471741,
                0.25,
                0.19715191423892975,
                0.20000000298023224,
                {"pgd-3": 0.6857143044471741, "pgd-6": 0.6857143044471741},
            ),
        ],
        [0.6857143044471741],
        [],
        137.6122801937163,
    ),
}
# name -> (sum of adversarial pixels, sum of perturbation norms, gradient evaluations, robust points)
RUNS = {
    "fgsm": (714.9992927219719, 0.9600000381469727, 104, 14),
    "pgd_linf": (714.9859076645225, 0.9589226897805929, 317, 14),
    "pgd_l2": (716.582612471655, 6.348396226763725, 258, 9),
    "pgd_l2_full": (714.6899029982742, 6.293037116527557, 359, 9),
    "pgd_target": (716.9292815178633, 1.0625001788139343, 156, 13),
}


def close(got: Any, expected: Any) -> bool:
    """Equal structure, equal integers and strings, floats within a relative 1e-6."""
    if isinstance(expected, float):
        return isinstance(got, float) and math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(close(g, e) for g, e in zip(got, expected, strict=True))
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(close(got[k], expected[k]) for k in expected)
    return bool(got == expected)


def test_close_tells_a_last_bit_from_a_changed_figure():
    assert close([(0.30000007152557373, {"a": 0.5})], [(0.30000004172325134, {"a": 0.5})])
    assert not close([(0.3001, {"a": 0.5})], [(0.3, {"a": 0.5})])
    assert not close((1, 2), (1, 3)) and not close({"a": 0.5}, {"b": 0.5}) and not close([0.5], [0.5, 0.5])


def test_evaluate_attack_figures_are_unchanged():
    model, x, y = tiny_case()
    for name, spec in SPECS.items():
        evaluation = evaluate_attack(model, x, y, spec)
        rows, checks, codes, pixels = EVALUATIONS[name]
        got = [
            (r.robust_accuracy, r.success_rate, r.mean_perturbation, r.max_perturbation, r.robust_accuracy_per_attack)
            for r in evaluation.rows
        ]
        assert close(got, rows), (name, got)
        assert close([c["robust_accuracy"] for c in evaluation.checks], checks), name
        assert [w["code"] for w in evaluation.warnings] == codes, name
        assert close(float(evaluation.examples["adversarial"].double().sum()), pixels), name


def test_attack_runs_are_unchanged():
    model, x, y = tiny_case()
    for name, build in BUILDS.items():
        result = build().run(model, x, y)
        got = (
            float(result.adversarial.double().sum()),
            float(result.perturbation_norm.double().sum()),
            result.gradient_evaluations,
            int(result.robust.sum()),
        )
        assert close(got, RUNS[name]), (name, got)
