"""Robust accuracy over eps lists, one row per (method, norm, eps, steps), and the sanity flags that catch
gradient masking and broken attacks (the lesson of AutoAttack): each flag is a named warning, never silence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import pairwise
from typing import Any

import torch
import torch.nn as nn

from ..errors import AuditError, InvariantError, allowed
from ..inference import eval_mode, model_device
from ..values import fmt_eps
from .base import ATTACKS, Attack, AttackResult, attack_class, share_of
from .fgsm import FGSM

HUGE_LINF_EPS = 0.5  # at this Linf radius every image can reach mid-gray (all pixels 0.5); no further, as a black
# pixel reaches only [0, 0.5]
ZERO_GRADIENT_SHARE = 0.1  # flag when more than this share of attacked points had no usable input gradient


PGD_STEPS = 10  # the default number of PGD steps


@dataclass
class AttackSpec:
    """The attack to run at every eps, and whether to run the sanity checks. Each attack takes the settings here
    that it has a field for; setting one that the chosen method does not take is refused (it would be ignored)."""

    method: str = "pgd"  # a name in ATTACKS
    norm: str = "linf"
    eps: list[float] = field(default_factory=lambda: [0.0, 2 / 255, 4 / 255, 8 / 255])
    steps: int = PGD_STEPS
    restarts: int = 1
    step_size: float | None = None
    target: int | str | None = None
    batch_size: int = 512
    seed: int = 0
    sanity: bool = True

    def build(self, eps: float, method: str | None = None, **overrides: Any) -> Attack:
        """The attack at radius eps, given the settings of this spec that it takes; `method` and `overrides` replace
        this spec's settings (for the sanity runs)."""
        cls = attack_class(method or self.method)
        given = {**{f.name: getattr(self, f.name) for f in fields(self)}, "eps": eps, **overrides}
        return cls(**{name: given[name] for name in cls.settings() if name in given})

    def validate(self) -> None:
        if not self.eps:
            raise AuditError("eps list is empty; allowed: one or more radii, e.g. 0,2/255,4/255,8/255")
        cls = attack_class(self.method)
        # The settings of this spec that some attack takes but the chosen one does not: they would be recorded in
        # the report but never used, so a value other than the default is refused.
        some_attack_takes = {name for attack in ATTACKS.values() for name in attack.settings()}
        not_taken = [f.name for f in fields(self) if f.name in some_attack_takes and f.name not in cls.settings()]
        defaults = AttackSpec()
        ignored = [name for name in not_taken if getattr(self, name) != getattr(defaults, name)]
        if ignored:
            values = ", ".join(f"{name} {_setting(getattr(self, name))}" for name in ignored)
            takers = [name for name, attack in ATTACKS.items() if set(ignored) <= set(attack.settings())]
            instead = f", or method {allowed(takers)}" if takers else ""
            raise AuditError(
                f"method {cls.name} {cls.description}, so {values} would be ignored; "
                f"allowed: leave {_all_of(not_taken)} unset with {cls.name}{instead}"
            )
        for eps in self.eps:
            self.build(eps)  # each attack checks its own settings


def _setting(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _all_of(names: list[str]) -> str:
    """'a, b and c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@dataclass
class AttackRow:
    """One eps. robust_accuracy is the headline: per sample, the worst case over every attack the evaluation ran at
    this eps and norm (the attack itself and its sanity runs); robust_accuracy_per_attack keeps each run's own
    figure. Targeted rows count only the points whose label is not their target (left_out: the others)."""

    method: str
    norm: str
    eps: float
    steps: int
    target: int | str | None  # None: untargeted; a class index, 'random' or 'least-likely' (as given)
    restarts: int  # random starts per point (1 for FGSM)
    clean_accuracy: float
    robust_accuracy: float
    success_rate: float  # over the points correct before the attack, broken by any run
    mean_perturbation: float  # over the points broken (0 when none)
    max_perturbation: float
    seconds: float  # of the attack itself, not its sanity runs
    images_per_second: float
    zero_gradient_share: float
    n: int  # points counted
    left_out: int = 0  # targeted: points whose label is their target
    robust_accuracy_per_attack: dict[str, float] = field(default_factory=dict)  # run label (pgd-10, fgsm) -> own figure
    oom_retries: int = 0  # batches halved after running out of GPU memory


@dataclass
class AttackEvaluation:
    rows: list[AttackRow]
    warnings: list[dict[str, str]]
    checks: list[dict[str, Any]]  # the extra attacks the sanity flags ran, with their numbers
    examples: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "warnings": self.warnings, "checks": self.checks}


def worst_case(results: list[AttackResult]) -> AttackResult:
    """Per sample, the first run (in the order given) that broke the point: its adversarial image, prediction and
    perturbation; a point stays robust only if every run left it robust. The runs attacked the same points."""
    first = results[0]
    combined = replace(
        first,
        robust=first.robust.clone(),
        adversarial=first.adversarial.clone(),
        adversarial_prediction=first.adversarial_prediction.clone(),
        perturbation_norm=first.perturbation_norm.clone(),
    )
    for other in results[1:]:
        same_targets = (other.targets is None and first.targets is None) or (
            other.targets is not None and first.targets is not None and torch.equal(other.targets, first.targets)
        )
        if not (same_targets and torch.equal(other.counted, first.counted) and torch.equal(other.labels, first.labels)):
            raise InvariantError(
                "the runs at one eps attacked different points or targets; their worst case is undefined"
            )
        newly = combined.robust & ~other.robust
        combined.robust &= other.robust
        combined.adversarial[newly] = other.adversarial[newly]
        combined.adversarial_prediction[newly] = other.adversarial_prediction[newly]
        combined.perturbation_norm[newly] = other.perturbation_norm[newly]
    return combined


def _row(attack: Attack, result: AttackResult, own: dict[str, float]) -> AttackRow:
    """The row of `attack` at its eps; `result` is the worst case over the runs whose own figures are `own`."""
    broken = ~result.robust & result.attacked
    norms = result.perturbation_norm[broken]
    return AttackRow(
        method=attack.name,
        norm=attack.norm,
        eps=attack.eps,
        steps=attack.step_count,
        target=attack.target,
        restarts=attack.restart_count,
        clean_accuracy=result.clean_accuracy,
        robust_accuracy=result.robust_accuracy,
        success_rate=result.success_rate,
        mean_perturbation=float(norms.mean()) if len(norms) else 0.0,
        max_perturbation=float(norms.max()) if len(norms) else 0.0,
        seconds=result.seconds,
        images_per_second=len(result.labels) / max(result.seconds, 1e-9),
        zero_gradient_share=share_of(result.zero_gradient, result.attacked),
        n=int(result.counted.sum()),
        left_out=result.left_out,
        robust_accuracy_per_attack=own,
        oom_retries=result.oom_retries,
    )


def mid_gray_class(model: nn.Module, shape: torch.Size) -> int:
    """The model's answer on the image whose every pixel is 0.5. shape: (C, H, W)."""
    gray = torch.full((1, *shape), 0.5, device=model_device(model))
    with torch.no_grad(), eval_mode(model):
        return int(model(gray).float().argmax(1))


def evaluate_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: AttackSpec,
    *,
    tolerance: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> AttackEvaluation:
    """Run the attack at every eps, then the sanity checks; each row's headline is the per-sample worst case over
    every run at its eps and norm. tolerance: how far a robust accuracy may move the wrong way before a flag is
    raised (default: the larger of 1 % and two images' worth)."""
    spec.validate()
    tol = tolerance if tolerance is not None else max(0.01, 2.0 / max(1, len(labels)))
    attacks: dict[float, Attack] = {}
    own: dict[float, AttackResult] = {}  # the attack's own result at each eps
    runs: dict[float, list[tuple[Attack, AttackResult]]] = {}  # every run at each eps of the spec's norm, in order

    def run(attack: Attack) -> AttackResult:
        if progress:
            progress(f"{attack.name} {attack.norm} eps={fmt_eps(attack.eps)}")
        result = attack.run(model, images, labels)
        if attack.norm == spec.norm and attack.eps in runs:
            runs[attack.eps].append((attack, result))
        return result

    for eps in sorted(spec.eps):
        attacks[eps] = spec.build(eps)
        runs[eps] = []
        own[eps] = run(attacks[eps])
    warnings: list[dict[str, str]] = []
    checks: list[dict[str, Any]] = []

    def warn(code: str, message: str) -> None:
        warnings.append({"code": code, "message": message})

    for lower, higher in pairwise(sorted(own)):
        low, high = own[lower].robust_accuracy, own[higher].robust_accuracy
        if high > low + tol:
            warn(
                "robust_accuracy_rises_with_eps",
                f"robust accuracy rose from {low:.3f} at eps {fmt_eps(lower)} to {high:.3f} at eps {fmt_eps(higher)}: "
                "the attack is failing, suspect gradient masking",
            )
    # The sanity runs vary the steps and compare with FGSM: they check attacks that take steps.
    if spec.sanity and "steps" in attack_class(spec.method).settings():
        top = max(spec.eps)
        if spec.norm in FGSM.norms:
            for eps in sorted(own):
                if eps == 0:
                    continue
                fgsm = run(spec.build(eps, method=FGSM.name))
                mine = own[eps].robust_accuracy
                checks.append({"check": "fgsm_same_eps", "eps": eps, "robust_accuracy": fgsm.robust_accuracy})
                if mine > fgsm.robust_accuracy + tol:
                    warn(
                        "pgd_weaker_than_fgsm",
                        f"PGD robust accuracy {mine:.3f} is above FGSM's {fgsm.robust_accuracy:.3f} at "
                        f"eps {fmt_eps(eps)}: PGD is not converging (step size, steps, or gradient masking)",
                    )
        if top > 0:
            doubled = run(spec.build(top, steps=2 * spec.steps))
            base = own[top].robust_accuracy
            checks.append(
                {
                    "check": "double_steps",
                    "eps": top,
                    "steps": 2 * spec.steps,
                    "robust_accuracy": doubled.robust_accuracy,
                }
            )
            if doubled.robust_accuracy < base - tol:
                warn(
                    "more_steps_lower_robust_accuracy",
                    f"doubling the steps to {2 * spec.steps} lowered robust accuracy from {base:.3f} to "
                    f"{doubled.robust_accuracy:.3f} at eps {fmt_eps(top)}: the attack alone overstates robustness "
                    "(the headline takes the worst case of both)",
                )
            elif doubled.robust_accuracy > base + tol:
                warn(
                    "more_steps_raise_robust_accuracy",
                    f"doubling the steps raised robust accuracy from {base:.3f} to {doubled.robust_accuracy:.3f} "
                    f"at eps {fmt_eps(top)}: the attack is unstable; suspect randomness or gradient masking",
                )
        if spec.target is None:
            huge = run(spec.build(HUGE_LINF_EPS, norm="linf", steps=max(spec.steps, 20), step_size=None))
            gray = mid_gray_class(model, images.shape[1:])
            # Every pixel is within 0.5 of 0.5, so the mid-gray image lies in every point's ball: each point whose
            # label is not the model's answer on it has a known adversarial at this radius.
            missed = share_of(huge.robust & (huge.labels != gray), huge.counted)
            checks.append(
                {
                    "check": "huge_eps",
                    "norm": "linf",
                    "eps": HUGE_LINF_EPS,
                    "robust_accuracy": huge.robust_accuracy,
                    "gray_class": gray,
                    "robust_but_broken_by_gray": missed,
                }
            )
            if missed > tol:
                warn(
                    "robust_at_huge_eps",
                    f"{missed:.3f} of the points stay robust at Linf eps {HUGE_LINF_EPS} although the mid-gray image "
                    f"(every pixel 0.5) lies in each of their balls and the model calls it class {gray}: the attack "
                    "misses adversarials known to exist; suspect gradient masking",
                )
    rows = [
        _row(
            attacks[eps], worst_case([r for _, r in runs[eps]]), {a.run_label: r.robust_accuracy for a, r in runs[eps]}
        )
        for eps in sorted(runs)
    ]
    for row in rows:
        if row.zero_gradient_share > ZERO_GRADIENT_SHARE:
            warn(
                "zero_or_nan_gradients",
                f"{row.zero_gradient_share:.0%} of attacked points had an input gradient that was all zero or had "
                f"NaN/infinite entries at eps {fmt_eps(row.eps)} (such entries are set to 0 before each step): "
                "gradient-based attacks see these points poorly; suspect gradient masking",
            )
            break
    strongest = worst_case([r for _, r in runs[max(runs)]])
    pick = torch.arange(min(8, len(labels)))
    examples = {
        "clean": images[pick],
        "adversarial": strongest.adversarial[pick],
        "labels": labels[pick],
        "predictions": strongest.adversarial_prediction[pick],
    }
    return AttackEvaluation(rows, warnings, checks, examples)
