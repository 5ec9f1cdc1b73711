"""Robust accuracy over eps lists, one row per (method, norm, eps, steps), and the sanity flags that catch
gradient masking and broken attacks (the lesson of AutoAttack): each flag is a named warning, never silence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import AuditError
from ..values import fmt_eps
from .base import Attack, AttackResult, make_attack

HUGE_LINF_EPS = 0.5  # at this Linf radius any image can be turned into mid-gray: robust accuracy must be ~0
ZERO_GRADIENT_SHARE = 0.1  # flag when more than this share of attacked points had no usable input gradient


@dataclass
class AttackSpec:
    method: str = "pgd"  # fgsm or pgd
    norm: str = "linf"
    eps: list[float] = field(default_factory=lambda: [0.0, 2 / 255, 4 / 255, 8 / 255])
    steps: int = 10
    restarts: int = 1
    step_size: float | None = None
    target: int | str | None = None
    batch_size: int = 512
    seed: int = 0
    sanity: bool = True

    def build(self, eps: float, method: str | None = None, **overrides: Any) -> Attack:
        """The attack at radius eps; `method` and `overrides` replace this spec's settings (for the sanity runs)."""
        method = method or self.method
        kwargs: dict[str, Any] = dict(eps=eps, norm=self.norm, target=self.target, seed=self.seed, batch_size=self.batch_size)
        if method == "pgd":
            kwargs.update(steps=self.steps, restarts=self.restarts, step_size=self.step_size)
        kwargs.update(overrides)
        return make_attack(method, **kwargs)

    def validate(self) -> None:
        if not self.eps:
            raise AuditError("eps list is empty; allowed: one or more radii, e.g. 0,2/255,4/255,8/255")
        for eps in self.eps:
            self.build(eps)  # each attack checks its own settings


@dataclass
class AttackRow:
    method: str
    norm: str
    eps: float
    steps: int
    clean_accuracy: float
    robust_accuracy: float
    success_rate: float
    mean_perturbation: float  # over the points the attack broke (0 when none)
    max_perturbation: float
    seconds: float
    images_per_second: float
    zero_gradient_share: float
    n: int
    oom_retries: int = 0  # batches halved after running out of GPU memory


@dataclass
class AttackEvaluation:
    rows: list[AttackRow]
    warnings: list[dict[str, str]]
    checks: list[dict[str, Any]]  # the extra attacks the sanity flags ran, with their numbers
    examples: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "warnings": self.warnings, "checks": self.checks}


def steps_of(attack: Attack) -> int:
    return getattr(attack, "steps", 1)


def _row(attack: Attack, result: AttackResult) -> AttackRow:
    broken = ~result.robust & result.clean_correct
    norms = result.perturbation_norm[broken]
    attacked = result.clean_correct
    return AttackRow(
        method=attack.name, norm=attack.norm, eps=attack.eps, steps=steps_of(attack),
        clean_accuracy=result.clean_accuracy, robust_accuracy=result.robust_accuracy, success_rate=result.success_rate,
        mean_perturbation=float(norms.mean()) if len(norms) else 0.0,
        max_perturbation=float(norms.max()) if len(norms) else 0.0,
        seconds=result.seconds, images_per_second=len(result.labels) / max(result.seconds, 1e-9),
        zero_gradient_share=float(result.zero_gradient[attacked].float().mean()) if attacked.any() else 0.0,
        n=len(result.labels), oom_retries=result.oom_retries,
    )


def evaluate_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: AttackSpec,
    *,
    tolerance: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> AttackEvaluation:
    """Run the attack at every eps, then the sanity checks. tolerance: how far a robust accuracy may move the wrong
    way before a flag is raised (default: the larger of 1 % and two images' worth)."""
    spec.validate()
    tol = tolerance if tolerance is not None else max(0.01, 2.0 / max(1, len(labels)))
    rows, results = [], {}
    for eps in sorted(spec.eps):
        attack = spec.build(eps)
        if progress:
            progress(f"{attack.name} {attack.norm} eps={fmt_eps(eps)}")
        result = attack.run(model, images, labels)
        rows.append(_row(attack, result))
        results[eps] = result
    warnings: list[dict[str, str]] = []
    checks: list[dict[str, Any]] = []

    def warn(code: str, message: str) -> None:
        warnings.append({"code": code, "message": message})

    for lower, higher in zip(rows, rows[1:]):
        if higher.robust_accuracy > lower.robust_accuracy + tol:
            warn("robust_accuracy_rises_with_eps",
                 f"robust accuracy rose from {lower.robust_accuracy:.3f} at eps {fmt_eps(lower.eps)} to "
                 f"{higher.robust_accuracy:.3f} at eps {fmt_eps(higher.eps)}: the attack is failing, suspect gradient masking")
    for row in rows:
        if row.zero_gradient_share > ZERO_GRADIENT_SHARE:
            warn("zero_or_nan_gradients",
                 f"{row.zero_gradient_share:.0%} of attacked points had zero or NaN input gradients at eps {fmt_eps(row.eps)}: "
                 "gradient-based attacks cannot see them; suspect gradient masking")
            break
    if spec.sanity and spec.method == "pgd":
        top = max(spec.eps)
        if spec.norm == "linf":
            for row in rows:
                if row.eps == 0:
                    continue
                fgsm = spec.build(row.eps, method="fgsm").run(model, images, labels)
                checks.append({"check": "fgsm_same_eps", "eps": row.eps, "robust_accuracy": fgsm.robust_accuracy})
                if row.robust_accuracy > fgsm.robust_accuracy + tol:
                    warn("pgd_weaker_than_fgsm",
                         f"PGD robust accuracy {row.robust_accuracy:.3f} is above FGSM's {fgsm.robust_accuracy:.3f} at "
                         f"eps {fmt_eps(row.eps)}: PGD is not converging (step size, steps, or gradient masking)")
        if top > 0:
            doubled = spec.build(top, steps=2 * spec.steps).run(model, images, labels)
            base = results[top].robust_accuracy
            checks.append({"check": "double_steps", "eps": top, "steps": 2 * spec.steps, "robust_accuracy": doubled.robust_accuracy})
            if doubled.robust_accuracy < base - tol:
                warn("more_steps_lower_robust_accuracy",
                     f"doubling the steps to {2 * spec.steps} lowered robust accuracy from {base:.3f} to "
                     f"{doubled.robust_accuracy:.3f} at eps {fmt_eps(top)}: the reported figure overstates robustness")
            elif doubled.robust_accuracy > base + tol:
                warn("more_steps_raise_robust_accuracy",
                     f"doubling the steps raised robust accuracy from {base:.3f} to {doubled.robust_accuracy:.3f} "
                     f"at eps {fmt_eps(top)}: the attack is unstable; suspect randomness or gradient masking")
        if spec.target is None:
            huge = spec.build(HUGE_LINF_EPS, norm="linf", steps=max(spec.steps, 20), step_size=None).run(model, images, labels)
            checks.append({"check": "huge_eps", "norm": "linf", "eps": HUGE_LINF_EPS, "robust_accuracy": huge.robust_accuracy})
            if huge.robust_accuracy > tol:
                warn("robust_at_huge_eps",
                     f"robust accuracy is {huge.robust_accuracy:.3f} at Linf eps {HUGE_LINF_EPS}, where every image can "
                     "be made any other: the attack is failing; suspect gradient masking")
    strongest = results[max(results)]
    pick = torch.arange(min(8, len(labels)))
    examples = {"clean": images[pick], "adversarial": strongest.adversarial[pick], "labels": labels[pick],
                "predictions": strongest.adversarial_prediction[pick]}
    return AttackEvaluation(rows, warnings, checks, examples)
