"""Robust accuracy over eps lists, one row per (method, norm, eps, steps), and the sanity flags that catch
gradient masking and broken attacks (the lesson of AutoAttack): each flag is a named warning, never silence."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..checkpoint import Checkpoint, as_payload
from ..data.stream import PixelStore, as_store, my_batches_of
from ..errors import AuditError, InvariantError, allowed
from ..inference import eval_mode, model_device
from ..io import atomic_torch_save, atomic_write_text
from ..runtime import gather_parts, is_main_process
from ..values import fmt_eps
from .base import ATTACKS, Attack, AttackResult, attack_class, concat_results, share_of
from .fgsm import FGSM

HUGE_LINF_EPS = 0.5  # at this Linf radius every image can reach mid-gray (all pixels 0.5); no further, as a black
# pixel reaches only [0, 0.5]
ZERO_GRADIENT_SHARE = 0.1  # flag when more than this share of attacked points had no usable input gradient


PGD_STEPS = 10  # the default number of PGD steps
# The flags that say a robust accuracy may overstate robustness (the attack failed, converged poorly, or met masked
# gradients): a gate never passes a check whose figure carries one (gate.judge), unless the audit file allows it.
MASKING_WARNINGS = frozenset(
    {
        "robust_accuracy_rises_with_eps",
        "pgd_weaker_than_fgsm",
        "more_steps_lower_robust_accuracy",
        "more_steps_raise_robust_accuracy",
        "robust_at_huge_eps",
        "zero_or_nan_gradients",
        "black_box_beats_white_box",
    }
)


@dataclass
class AttackSpec:
    """The attack to run at every eps, and whether to run the sanity checks. Each attack takes the settings here
    that it has a field for; setting one that the chosen method does not take is refused (it would be ignored)."""

    method: str = "pgd"  # a name in ATTACKS
    norm: str = "linf"
    eps: list[float] = field(default_factory=lambda: [0.0, 2 / 255, 4 / 255, 8 / 255])
    steps: int | None = None  # None: the attack's own default (PGD 10, APGD and FAB 100)
    restarts: int = 1
    step_size: float | None = None
    target: int | str | None = None
    batch_size: int = 512
    seed: int = 0
    sanity: bool = True
    loss: str = "ce"  # APGD's: ce (cross-entropy) or dlr (difference of logits ratio)
    target_classes: int | None = None  # APGD-T, FAB-T: how many other classes (by clean logit) each point is pushed
    # toward (None: AutoAttack's 9, at most K-1)
    queries: int = 5000  # Square: model evaluations per point
    version: str = "standard"  # AutoAttack's: standard, plus or rand

    def build(self, eps: float, method: str | None = None, **overrides: Any) -> Attack:
        """The attack at radius eps, given the settings of this spec that it takes; `method` and `overrides` replace
        this spec's settings (for the sanity runs)."""
        cls = attack_class(method or self.method)
        given = {**{f.name: getattr(self, f.name) for f in fields(self)}, "eps": eps, **overrides}
        # None stands for the attack's own default (its steps, PGD's step size, untargeted)
        return cls(**{name: given[name] for name in cls.settings() if given.get(name) is not None})

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
                f"allowed: leave {_all_of(ignored)} unset with {cls.name}{instead}"
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
    broken_by_attack: dict[str, int] = field(default_factory=dict)  # an ensemble's: points each of its attacks broke
    oom_retries: int = 0  # batches halved after running out of memory (CUDA, or a failed CPU allocation)


@dataclass
class AttackEvaluation:
    rows: list[AttackRow]
    warnings: list[dict[str, str]]
    checks: list[dict[str, Any]]  # the extra attacks the sanity flags ran, with their numbers
    examples: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rows = [{k: v for k, v in asdict(r).items() if k != "broken_by_attack" or v} for r in self.rows]
        return {"rows": rows, "warnings": self.warnings, "checks": self.checks}


def worst_case(results: list[AttackResult]) -> AttackResult:
    """Per sample, the first run (in the order given) that broke the point: its adversarial image (when the runs
    kept them), prediction and perturbation; a point stays robust only if every run left it robust. The runs
    attacked the same points."""
    first = results[0]
    combined = replace(
        first,
        robust=first.robust.clone(),
        adversarial=None if first.adversarial is None else first.adversarial.clone(),
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
        if combined.adversarial is not None and other.adversarial is not None:
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
        broken_by_attack=_broken_by(attack, result),
    )


UNATTRIBUTED = "unattributed"  # broken by the final answer although no member saw it broken (a random model)


def _broken_by(attack: Attack, result: AttackResult) -> dict[str, int]:
    """An ensemble's count of the points each of its attacks broke (counted points whose final answer is wrong);
    their sum is the points broken. A model with randomness can answer the final forward pass otherwise than the
    member's own: such points are counted under UNATTRIBUTED, shown only when there are some."""
    if not attack.component_labels or result.broken_by is None:
        return {}
    broken = ~result.robust & result.attacked
    counts = {label: int((broken & (result.broken_by == i)).sum()) for i, label in enumerate(attack.component_labels)}
    unattributed = int((broken & (result.broken_by < 0)).sum())
    return {**counts, UNATTRIBUTED: unattributed} if unattributed else counts


def mid_gray_class(model: nn.Module, shape: torch.Size) -> int:
    """The model's answer on the image whose every pixel is 0.5. shape: (C, H, W)."""
    gray = torch.full((1, *shape), 0.5, device=model_device(model))
    with torch.no_grad(), eval_mode(model):
        return int(model(gray).float().argmax(1))


@dataclass
class _Run:
    """One attack over every image: its per-sample numbers batch by batch (no images kept)."""

    role: str  # "attack", or the sanity check it serves: "fgsm_same_eps", "double_steps", "huge_eps"
    attack: Attack
    parts: list[AttackResult] = field(default_factory=list)

    def result(self, like: torch.Tensor) -> AttackResult:
        """Every process's numbers, in order; `seconds` is this process's time in the attack."""
        local = concat_results(self.parts, like=like)
        result = concat_results(gather_parts([local] if self.parts else []), like=like)
        result.seconds = sum(p.seconds for p in self.parts)
        return result


def planned_runs(spec: AttackSpec) -> list[tuple[str, Attack]]:
    """Every attack an evaluation runs, in order, with its role: the attack at each eps ("attack"), then, for an
    attack that takes steps, the sanity runs: FGSM at each nonzero eps ("fgsm_same_eps", Linf), twice the steps at
    the largest eps ("double_steps"), and untargeted Linf eps HUGE_LINF_EPS ("huge_eps")."""
    runs = [("attack", spec.build(eps)) for eps in sorted(spec.eps)]
    cls = attack_class(spec.method)
    if spec.sanity and "steps" in cls.settings() and cls.sanity_runs:
        top = max(spec.eps)
        if spec.norm in FGSM.norms:
            runs += [("fgsm_same_eps", spec.build(eps, method=FGSM.name)) for eps in sorted(spec.eps) if eps != 0]
        steps = spec.build(top).step_count
        if top > 0:
            runs.append(("double_steps", spec.build(top, steps=2 * steps)))
        if spec.target is None:
            huge = spec.build(HUGE_LINF_EPS, norm="linf", steps=max(steps, 20), step_size=None)
            runs.append(("huge_eps", huge))
    return runs


def evaluate_attack(
    model: nn.Module,
    images: torch.Tensor | PixelStore,
    labels: torch.Tensor,
    spec: AttackSpec,
    *,
    tolerance: float | None = None,
    progress: Callable[[str], None] | None = None,
    save_adversarial: Path | None = None,
    workers: int | None = None,
    checkpoint: Checkpoint | None = None,
) -> AttackEvaluation:
    """Run the attack at every eps, then the sanity checks; each row's headline is the per-sample worst case over
    every run at its eps and norm. tolerance: how far a robust accuracy may move the wrong way before a flag is
    raised (default: the larger of 1 % and two images' worth).

    The images are read once, spec.batch_size at a time (a store decodes files in `workers` processes), and every
    run attacks each batch before the next is read; only per-sample numbers are kept, plus the first 8 images for
    the pictures. With `save_adversarial`, each batch's worst-case adversarial images at every eps are written there
    (save_adversarial_batch). Each (attack, batch) draws from its own seeded stream, so the numbers do not depend on
    the order of the runs, on the number of processes, or on whether the images came as a tensor or a store.
    With a `checkpoint`, each batch's per-sample numbers are saved as it is done, and batches saved by an
    interrupted run (checkpoint.resume) are taken from there instead of measured again."""
    spec.validate()
    store = as_store(images)
    if len(store) != len(labels):
        raise AuditError(f"{len(store)} images with {len(labels)} labels; allowed: one label per image")
    tol = tolerance if tolerance is not None else max(0.01, 2.0 / max(1, len(labels)))
    runs = [_Run(role, attack) for role, attack in planned_runs(spec)]
    if len(store):  # what the model's number of classes rules out is refused before any work (every process alike)
        with torch.no_grad(), eval_mode(model):
            classes = int(model(store.read(torch.arange(1)).to(model_device(model))).shape[1])
        for r in runs:
            r.attack.check_classes(classes)
    # the runs that join each eps's headline: those at that eps in the spec's norm, in order
    joining = {eps: [r for r in runs if r.attack.norm == spec.norm and r.attack.eps == eps] for eps in spec.eps}
    device = model_device(model)
    batches = -(-len(labels) // spec.batch_size)  # every process's, for the progress line
    top = max(spec.eps)
    joins = {id(r): eps for eps, rs in joining.items() for r in rs}  # the eps whose headline each run joins
    like = torch.zeros(0, *store.shape)
    examples: dict[str, list[torch.Tensor]] = {"clean": [], "adversarial": [], "labels": [], "predictions": []}
    files: list[str] = []
    for index, begin, end, x in my_batches_of(store, spec.batch_size, workers=workers):
        saved = None if checkpoint is None else checkpoint.load(index)
        if saved is not None and _restore(saved, runs, examples, begin, end):
            continue
        if progress:
            progress(f"batch {index + 1} of {batches}: images {begin}-{end}")
        taken = sum(len(t) for t in examples["labels"])
        x, y = x.to(device, non_blocking=True), labels[begin:end].to(device)
        # Images are kept only while they are needed: every eps's worst case when saving, the largest eps's while
        # the examples are not all taken; one run's adversarial batch at a time otherwise.
        wanted = set(spec.eps) if save_adversarial is not None else set()
        if taken < EXAMPLES:
            wanted.add(top)
        worst: dict[float, AttackResult] = {}
        for r in runs:
            result = r.attack.attack_batch(model, x, y, index)
            r.parts.append(replace(result, adversarial=None))
            eps = joins.get(id(r))
            if eps is not None:
                mine = result if eps in wanted else replace(result, adversarial=None)
                worst[eps] = mine if eps not in worst else worst_case([worst[eps], mine])
            del result
        if save_adversarial is not None:
            files.append(save_adversarial_batch(save_adversarial, index, begin, worst))
        if top in wanted:
            _keep_examples(examples, x, worst[top])
        if checkpoint is not None:
            checkpoint.save(index, {**_payload(runs, examples, taken), "range": torch.tensor([begin, end])})
        del worst, x, y
    results = {id(r): r.result(like) for r in runs}
    first = results[id(runs[0])]
    if len(first.labels) and not first.counted.any():
        raise AuditError(
            f"target {spec.target}: every image's label is its target, so no image is left to attack; "
            "allowed: a target class that some images do not have"
        )
    own = {eps: results[id(joining[eps][0])] for eps in sorted(spec.eps)}  # the attack's own result at each eps
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
    for r in runs:  # the sanity runs, in the order planned_runs gives them
        attack, result = r.attack, results[id(r)]
        if r.role == "fgsm_same_eps":
            mine_ra = own[attack.eps].robust_accuracy
            checks.append({"check": "fgsm_same_eps", "eps": attack.eps, "robust_accuracy": result.robust_accuracy})
            if mine_ra > result.robust_accuracy + tol:
                warn(
                    "pgd_weaker_than_fgsm",
                    f"PGD robust accuracy {mine_ra:.3f} is above FGSM's {result.robust_accuracy:.3f} at "
                    f"eps {fmt_eps(attack.eps)}: PGD is not converging (step size, steps, or gradient masking)",
                )
        elif r.role == "huge_eps":
            gray = mid_gray_class(model, torch.Size(store.shape))
            # Every pixel is within 0.5 of 0.5, so the mid-gray image lies in every point's ball: each point whose
            # label is not the model's answer on it has a known adversarial at this radius.
            missed = share_of(result.robust & (result.labels != gray), result.counted)
            checks.append(
                {
                    "check": "huge_eps",
                    "norm": "linf",
                    "eps": HUGE_LINF_EPS,
                    "robust_accuracy": result.robust_accuracy,
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
        elif r.role == "double_steps":
            top, base = attack.eps, own[attack.eps].robust_accuracy
            doubled = result.robust_accuracy
            checks.append({"check": "double_steps", "eps": top, "steps": attack.step_count, "robust_accuracy": doubled})
            if doubled < base - tol:
                warn(
                    "more_steps_lower_robust_accuracy",
                    f"doubling the steps to {attack.step_count} lowered robust accuracy from {base:.3f} to "
                    f"{doubled:.3f} at eps {fmt_eps(top)}: the attack alone overstates robustness "
                    "(the headline takes the worst case of both)",
                )
            elif doubled > base + tol:
                warn(
                    "more_steps_raise_robust_accuracy",
                    f"doubling the steps raised robust accuracy from {base:.3f} to {doubled:.3f} "
                    f"at eps {fmt_eps(top)}: the attack is unstable; suspect randomness or gradient masking",
                )
    rows = [
        _row(
            joining[eps][0].attack,
            worst_case([results[id(r)] for r in joining[eps]]),
            {r.attack.run_label: results[id(r)].robust_accuracy for r in joining[eps]},
        )
        for eps in sorted(spec.eps)
    ]
    for row, eps in zip(rows, sorted(spec.eps), strict=True):
        free = joining[eps][0].attack.gradient_free_labels
        by_free = sum(row.broken_by_attack.get(label, 0) for label in free)
        share = by_free / row.n if row.n else 0.0
        if by_free and share > tol:
            warn(
                "black_box_beats_white_box",
                f"{', '.join(free)} (no gradient) broke {by_free} point(s) ({share:.3f}) that every gradient attack "
                f"left standing at eps {fmt_eps(eps)}: the gradients mislead the attacks; suspect gradient masking",
            )
    checked_by = runs[0].attack.gradient_free_labels  # an ensemble's own check of what its gradients miss
    for row in rows:
        if row.zero_gradient_share > ZERO_GRADIENT_SHARE:
            seen = (
                f"{row.zero_gradient_share:.0%} of attacked points had an input gradient that was all zero or had "
                f"NaN/infinite entries at eps {fmt_eps(row.eps)} (such entries are set to 0 before each step)"
            )
            if checked_by:  # not a verdict on the figure: the gradient-free member is (black_box_beats_white_box)
                warn(
                    "zero_or_nan_gradients_in_ensemble",
                    f"{seen}, in the ensemble's first gradient attack; {', '.join(checked_by)} (no gradient) then "
                    "attacked every point the gradient attacks left standing",
                )
            else:
                warn(
                    "zero_or_nan_gradients",
                    f"{seen}: gradient-based attacks see these points poorly; suspect gradient masking",
                )
            break
    if save_adversarial is not None:
        write_adversarial_index(save_adversarial, spec, len(labels), gather_parts(files))
    kept = {key: torch.cat(parts) if parts else torch.zeros(0) for key, parts in examples.items()}
    return AttackEvaluation(rows, warnings, checks, kept if len(kept["labels"]) else {})


SAVED_FIELDS = (
    "labels",
    "clean_correct",
    "robust",
    "adversarial_prediction",
    "perturbation_norm",
    "zero_gradient",
    "counted",
    "targets",
    "broken_by",
)


def _payload(runs: list[_Run], examples: dict[str, list[torch.Tensor]], taken: int) -> dict[str, Any]:
    """The batch just done, as a checkpoint saves it: each run's per-sample numbers (its last part), and the example
    images this batch added (after the first `taken`)."""
    saved_runs = []
    for r in runs:
        part = r.parts[-1]
        fields_ = as_payload({name: getattr(part, name) for name in SAVED_FIELDS})
        numbers = torch.tensor([part.seconds, part.gradient_evaluations, part.oom_retries], dtype=torch.float64)
        saved_runs.append({**fields_, "numbers": numbers})
    added = {k: torch.cat(v)[taken:] if v else torch.zeros(0) for k, v in examples.items()}
    return {"runs": saved_runs, "examples": added}


def _restore(
    saved: dict[str, Any], runs: list[_Run], examples: dict[str, list[torch.Tensor]], begin: int, end: int
) -> bool:
    """Add a saved batch to the runs and the examples; False (nothing added) when it is not this batch of these runs
    (another range of images: the batch size was chosen otherwise)."""
    parts, n = [], end - begin
    try:
        if saved["range"].tolist() != [begin, end] or len(saved["runs"]) != len(runs):
            return False
        for data in saved["runs"]:
            values = {name: data.get(name) for name in SAVED_FIELDS}
            if any(not isinstance(values[k], torch.Tensor) or len(values[k]) != n for k in SAVED_FIELDS[:7]):
                return False
            seconds, evaluations, retries = data["numbers"].tolist()
            parts.append(
                AttackResult(
                    None, **values, seconds=seconds, gradient_evaluations=int(evaluations), oom_retries=int(retries)
                )
            )
        added = {k: saved["examples"][k] for k in examples}
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    for r, part in zip(runs, parts, strict=True):
        r.parts.append(part)
    for k, v in added.items():
        if len(v):
            examples[k].append(v)
    return True


EXAMPLES = 8  # images kept for the pictures: the first ones, clean and their worst-case adversarial at the top eps


def _keep_examples(examples: dict[str, list[torch.Tensor]], x: torch.Tensor, worst: AttackResult) -> None:
    """Add the first images of this batch until EXAMPLES are kept."""
    have = sum(len(t) for t in examples["labels"])
    take = min(EXAMPLES - have, len(x))
    if take <= 0 or worst.adversarial is None:
        return
    examples["clean"].append(x[:take].cpu())
    examples["adversarial"].append(worst.adversarial[:take])
    examples["labels"].append(worst.labels[:take])
    examples["predictions"].append(worst.adversarial_prediction[:take])


ADVERSARIAL_FORMAT = "auditnn.adversarial"


def save_adversarial_batch(folder: Path, index: int, begin: int, worst: dict[float, AttackResult]) -> str:
    """Write one batch's worst-case adversarial images at every eps to folder/batch-NNNNNN.pt (atomic; read it with
    torch.load(weights_only=True)): index (n,) the images' positions in the evaluated data, labels (n,), eps (E,),
    adversarial (E, n, C, H, W) float32 in [0, 1] (a point the attack did not try, or could not break, holds the
    image the attacks ended on: the clean image when not tried), prediction (E, n) and robust (E, n). Returns the
    file's name."""
    eps = sorted(worst)
    first = worst[eps[0]]
    name = f"batch-{index:06d}.pt"
    folder.mkdir(parents=True, exist_ok=True)  # under torchrun, another process may be the one that made it
    atomic_torch_save(
        folder / name,
        {
            "index": torch.arange(begin, begin + len(first.labels)),
            "labels": first.labels,
            "eps": torch.tensor(eps, dtype=torch.float64),
            "adversarial": torch.stack([_kept(worst[e]) for e in eps]),
            "prediction": torch.stack([worst[e].adversarial_prediction for e in eps]),
            "robust": torch.stack([worst[e].robust for e in eps]),
        },
        every_process=True,  # under torchrun, each process writes the batches it attacked
    )
    return name


def _kept(result: AttackResult) -> torch.Tensor:
    if result.adversarial is None:
        raise InvariantError("a batch's adversarial images were dropped before they were saved")
    return result.adversarial


def write_adversarial_index(folder: Path, spec: AttackSpec, n: int, files: list[str]) -> None:
    """folder/adversarial.json: what the batch files hold, so a reader can find and check them."""
    if not is_main_process():
        return
    index = {
        "format": ADVERSARIAL_FORMAT,
        "format_version": 1,
        "method": spec.method,
        "norm": spec.norm,
        "eps": sorted(spec.eps),
        "target": spec.target,
        "n_images": n,
        "batch_size": spec.batch_size,
        "files": files,
        "adversarial": "per eps, the worst case over every run at that eps (the attack and its sanity runs)",
    }
    atomic_write_text(folder / "adversarial.json", json.dumps(index, indent=2) + "\n")
