"""APGD and APGD-T (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1) in Linf and L2: PGD with momentum whose step size starts at 2 eps and
is halved, per sample, at checkpoints where progress stalled, restarting then from the best point found; the
cross-entropy or the scale-invariant DLR loss; APGD-T runs targeted DLR toward each of the highest-scoring other
classes in turn, on the points still standing. Pixel units of [0, 1] throughout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..errors import AuditError, allowed
from .base import Attack, Perturbed, finite_, is_adversarial, per_sample_loss, register_attack, unusable_gradient
from .norms import TINY_NORM, Norm

DEFAULT_STEPS = 100  # iterations per run (the paper's and AutoAttack's N_iter)
MOMENTUM = 0.75  # alpha: the weight of the gradient step against the last move (Algorithm 1)
RHO = 0.75  # condition 1: halve when fewer than this share of the steps since the last checkpoint raised the loss
INITIAL_STEP = 2.0  # the step size starts at this many eps
# The checkpoints p_j, in hundredths of the iterations: p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
FIRST_CHECKPOINT, CHECKPOINT_SHRINK, MIN_CHECKPOINT_GAP = 22, 3, 6
DLR_FLOOR = 1e-12  # added to the DLR denominator, as the paper does: three tied logits give -margin / 1e-12
LOSSES = ("ce", "dlr")

# objective(logits, labels, targets) -> (n,) the loss APGD maximizes; broken(logits, labels, targets) -> (n,) bool
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j x steps) after which APGD may halve its step (p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), computed in exact hundredths), increasing; those at 0 or at
    `steps` or past it are dropped (a halving after the last iterate changes nothing), as are repeats (few steps)."""
    marks: list[int] = []
    before, p = 0, FIRST_CHECKPOINT
    while p < 100:
        w = -(-p * steps // 100)  # ceil, in integers: 0.41 x 100 is 41, not float's 41.00000000000001 -> 42
        if 0 < w < steps and (not marks or w > marks[-1]):
            marks.append(w)
        before, p = p, p + max(p - before - CHECKPOINT_SHRINK, MIN_CHECKPOINT_GAP)
    return marks


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio, per sample: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), pi the classes
    sorted by logit, highest first. Unchanged when the logits are scaled or shifted; needs 3 classes."""
    ordered = logits.sort(dim=1, descending=True).values
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), -float("inf")).amax(1)
    return -(own - others) / (ordered[:, 0] - ordered[:, 2] + DLR_FLOOR)


def targeted_dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, per sample: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12). Needs 4 classes."""
    ordered = logits.sort(dim=1, descending=True).values
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    target = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    return -(own - target) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + DLR_FLOOR)


def _dlr(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    return dlr_loss(logits, labels) if targets is None else targeted_dlr_loss(logits, labels, targets)


def _off_label(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """APGD-T counts a point broken when it leaves its label, whichever class it lands in."""
    return logits.argmax(1) != labels


def _gradient(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    eot: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`eot` forward+backward passes: (logits of the last, per-sample objective and d sum(objective) / d x, each
    averaged over the passes). More than one pass is expectation over transformation (Athalye et al. 2018): for a
    model with randomness, the gradient of the expected loss. The gradient may hold NaN or infinite entries (pass it
    through finite_)."""
    x = x.detach().requires_grad_(True)
    total_loss: torch.Tensor | None = None
    total_grad: torch.Tensor | None = None
    for _ in range(eot):
        with torch.enable_grad():
            logits = model(x).float()
            losses = objective(logits, labels, targets)
            (grad,) = torch.autograd.grad(losses.sum(), x)
        total_loss = losses.detach() if total_loss is None else total_loss + losses.detach()
        total_grad = grad if total_grad is None else total_grad + grad
    assert total_loss is not None and total_grad is not None  # eot >= 1
    if eot == 1:
        return logits.detach(), total_loss, total_grad
    return logits.detach(), total_loss / eot, total_grad / eot


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class _State:
    """The points of one APGD run still being updated, each tensor indexed alike (n active points)."""

    idx: torch.Tensor  # positions in the run's batch
    x0: torch.Tensor  # clean images
    y0: torch.Tensor
    t0: torch.Tensor | None
    cur: torch.Tensor  # x^(k)
    prev: torch.Tensor  # x^(k-1)
    grad: torch.Tensor  # the objective's gradient at cur (finite)
    loss: torch.Tensor  # f(x^(k))
    step: torch.Tensor  # eta, per sample
    best: torch.Tensor  # x_max: the highest-loss iterate
    best_loss: torch.Tensor  # f_max
    best_grad: torch.Tensor
    raised: torch.Tensor  # steps since the last checkpoint that raised the loss
    best_at_check: torch.Tensor  # f_max at the last checkpoint
    halved: torch.Tensor  # bool: the step was halved at the last checkpoint
    found: torch.Tensor  # the first adversarial iterate (meaningful where hit)
    hit: torch.Tensor  # bool: an iterate was adversarial

    def keep(self, mask: torch.Tensor) -> _State:
        """The points where `mask` holds."""
        kept: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            kept[f.name] = None if value is None else value[mask]
        return _State(**kept)


@dataclass
class _RunResult:
    adversarial: torch.Tensor  # the first adversarial iterate where broken, else the highest-loss iterate
    loss: torch.Tensor  # the highest objective value reached
    broken: torch.Tensor
    zero_gradient: torch.Tensor  # the gradient at the start was all zero or not finite
    evaluations: int


def apgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    targets: torch.Tensor | None,
    objective: Objective,
    broken_by: Objective,
    geometry: Norm,
    eps: float,
    steps: int,
    generator: torch.Generator,
    eot: int = 1,
) -> _RunResult:
    """One run of Algorithm 1 on n points: a random start on the sphere of radius eps (as the reference does),
    `steps` momentum steps (alpha = 0.75, the first without momentum) from step size 2 eps, and at each checkpoint
    w_j the step halved, per sample, under condition 1 (fewer than rho = 0.75 of the w_j - w_{j-1} steps since the
    last checkpoint raised the loss) or condition 2 (the step was not halved at the last checkpoint and the best
    loss has not risen since), the iterate then moved back to the best point (with its gradient). A point leaves
    once an iterate is adversarial; it costs steps + 1 forward+backward passes at most.

    Where this departs from the reference code (fra31/auto-attack, autopgd_base.py), it follows the paper: the
    checkpoints come from the p_j formula (the reference's integer schedule 22, 19, 16, ... agrees at 100 steps, not
    at every count), condition 1 is "fewer than" (the reference: "at most") over exactly the steps since the last
    checkpoint, and condition 2 may hold at the first checkpoint (the reference skips it there). Broken points stop
    early (the reference runs them on): the same points break, for less work."""
    n = len(x)
    start = geometry.random_start(x.shape, 1.0, generator).to(x.device)
    start = eps * start / _per_sample(geometry.norm(start).clamp_min(TINY_NORM), start)
    cur = (x + start).clamp(0.0, 1.0)
    logits, loss, grad = _gradient(model, cur, objective, y, targets, eot)
    zero_gradient = unusable_gradient(grad)
    finite_(grad)
    hit = broken_by(logits, y, targets)
    evaluations = n * eot
    s = _State(
        idx=torch.arange(n, device=x.device),
        x0=x,
        y0=y,
        t0=targets,
        cur=cur,
        prev=cur,
        grad=grad,
        loss=loss,
        step=torch.full((n,), INITIAL_STEP * eps, device=x.device),
        best=cur,
        best_loss=loss,
        best_grad=grad,
        raised=torch.zeros(n, dtype=torch.long, device=x.device),
        best_at_check=loss,
        halved=torch.zeros(n, dtype=torch.bool, device=x.device),
        found=cur,
        hit=hit,
    )
    out_adv, out_loss = cur.clone(), loss.clone()
    out_broken = torch.zeros(n, dtype=torch.bool, device=x.device)
    marks, last_mark = set(checkpoints(steps)), 0
    for k in range(steps + 1):
        last = k == steps
        # Broken points leave in groups (an eighth of the active set at a time), as in PGD: their trajectories no
        # longer matter, and every other point's is its own (all state is per sample).
        if last or int(s.hit.sum()) * 8 >= len(s.idx):
            leaving = torch.ones_like(s.hit) if last else s.hit
            out = s.idx[leaving]
            out_adv[out] = torch.where(_per_sample(s.hit[leaving], s.cur), s.found[leaving], s.best[leaving])
            out_loss[out] = s.best_loss[leaving]
            out_broken[out] = s.hit[leaving]
            if last or bool(leaving.all()):
                break
            s = s.keep(~leaving)
        alpha = 1.0 if k == 0 else MOMENTUM
        x0 = s.x0
        z = (x0 + geometry.project(s.cur + geometry.direction(s.grad) * _per_sample(s.step, s.cur) - x0, eps)).clamp(
            0.0, 1.0
        )
        moved = s.cur + alpha * (z - s.cur) + (1 - alpha) * (s.cur - s.prev)
        nxt = (x0 + geometry.project(moved - x0, eps)).clamp(0.0, 1.0)
        logits, loss, grad = _gradient(model, nxt, objective, s.y0, s.t0, eot)
        finite_(grad)
        evaluations += len(s.idx) * eot
        hit = broken_by(logits, s.y0, s.t0)
        s.found = torch.where(_per_sample(hit & ~s.hit, nxt), nxt, s.found)
        s.hit = s.hit | hit
        s.raised = s.raised + (loss > s.loss).long()
        better = loss > s.best_loss
        s.best = torch.where(_per_sample(better, nxt), nxt, s.best)
        s.best_grad = torch.where(_per_sample(better, nxt), grad, s.best_grad)
        s.best_loss = torch.where(better, loss, s.best_loss)
        s.prev, s.cur, s.grad, s.loss = s.cur, nxt, grad, loss
        if k + 1 in marks:
            gap, last_mark = k + 1 - last_mark, k + 1
            stalled = s.raised.float() < RHO * gap  # condition 1
            flat = ~s.halved & (s.best_loss <= s.best_at_check)  # condition 2
            halve = stalled | flat
            s.step = torch.where(halve, s.step / 2, s.step)
            back = _per_sample(halve, s.cur)
            s.cur = torch.where(back, s.best, s.cur)
            s.grad = torch.where(back, s.best_grad, s.grad)
            s.loss = torch.where(halve, s.best_loss, s.loss)
            s.halved, s.best_at_check = halve, s.best_loss
            s.raised = torch.zeros_like(s.raised)
    return _RunResult(out_adv, out_loss, out_broken, zero_gradient, evaluations)


@dataclass
class _APGDBase(Attack):
    """steps: iterations per run (>= 1; default 100). restarts: runs per point from random starts on the sphere;
    only points still standing start again. eot: forward+backward passes averaged per gradient (1; AutoAttack's rand
    version takes 20, for models with randomness)."""

    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")  # Algorithm 1's geometries
    steps: int = DEFAULT_STEPS
    restarts: int = 1
    eot: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eot < 1:
            raise AuditError(f"eot {self.eot}; allowed: at least 1 pass per gradient")

    def memory_copies(self) -> int:
        """APGD's state per point: clean, current, previous, gradient, best, best gradient, found, kept, start and
        the step's temporaries."""
        return 12

    def _label(self, stem: str) -> str:
        return stem if self.steps == DEFAULT_STEPS else f"{stem} {self.steps} steps"

    def _runs(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        objective: Objective,
        broken_by: Objective,
        generator: torch.Generator,
        kept: _Kept,
    ) -> None:
        """`restarts` runs on the points of `kept` not yet broken, `kept` updated in place."""
        for _ in range(self.restarts):
            idx = torch.nonzero(~kept.broken).view(-1)
            if not len(idx):
                break
            t = None if targets is None else targets[idx]
            run = apgd_run(
                model, x[idx], y[idx], t, objective, broken_by, self.geometry, self.eps, self.steps, generator, self.eot
            )
            kept.add(idx, run)


@dataclass
class _Kept:
    """What the runs of one `_perturb` found, per point: a point broken keeps its first adversarial, one standing
    the highest-loss point of any run; zero_gradient is the first run's."""

    adversarial: torch.Tensor
    loss: torch.Tensor
    broken: torch.Tensor
    zero_gradient: torch.Tensor
    evaluations: int = 0
    started: bool = False

    @classmethod
    def start(cls, x: torch.Tensor, evaluations: int) -> _Kept:
        flags = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        return cls(x.clone(), torch.full((len(x),), -float("inf"), device=x.device), flags, flags.clone(), evaluations)

    def add(self, idx: torch.Tensor, run: _RunResult) -> None:
        """Fold in a run on the points at `idx` (none of them broken before)."""
        if not self.started:
            self.zero_gradient[idx] = run.zero_gradient
            self.started = True
        take = run.broken | (run.loss > self.loss[idx])
        self.adversarial[idx[take]] = run.adversarial[take]
        self.loss[idx[take]] = run.loss[take]
        self.broken[idx] = run.broken
        self.evaluations += run.evaluations

    def perturbed(self) -> Perturbed:
        return Perturbed(self.adversarial, self.broken, self.zero_gradient, self.evaluations)


@register_attack
@dataclass
class APGD(_APGDBase):
    """APGD on the cross-entropy ("ce") or DLR ("dlr") loss; with `target`, the targeted versions (minus the
    cross-entropy to the target, or targeted DLR), a point then broken when it reaches its target."""

    name: ClassVar[str] = "apgd"
    description: ClassVar[str] = "takes momentum steps whose size adapts to the loss"
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise AuditError(f"loss '{self.loss}' is unknown; allowed: {allowed(LOSSES)}")

    def check_classes(self, classes: int) -> None:
        super().check_classes(classes)
        self._check_dlr(classes, targeted=self.target is not None)

    def _check_dlr(self, classes: int, *, targeted: bool) -> None:
        if self.loss != "dlr":
            return
        need = 4 if targeted else 3
        if classes < need:
            toward = " toward a target" if targeted else ""
            raise AuditError(
                f"loss dlr{toward} with {classes} classes; allowed: loss ce, or a model with at least {need} classes"
            )

    @property
    def run_label(self) -> str:
        """apgd-ce or apgd-dlr, with its steps when they are not 100."""
        return self._label(f"apgd-{self.loss}")

    def _perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        generator: torch.Generator,
    ) -> Perturbed:
        with torch.no_grad():  # the number of classes, from one image (DLR needs 3, targeted DLR 4)
            classes = model(x[:1]).shape[1]
        self._check_dlr(classes, targeted=targets is not None)
        objective: Objective = _dlr if self.loss == "dlr" else per_sample_loss
        kept = _Kept.start(x, evaluations=1)
        self._runs(model, x, y, targets, objective, is_adversarial, generator, kept)
        return kept.perturbed()


DEFAULT_TARGET_CLASSES = 9  # AutoAttack's n_target_classes, capped at K - 1 when the setting is left unset


@register_attack
@dataclass
class APGDT(_APGDBase):
    """APGD-T: untargeted in what it counts (a point is broken when it leaves its label), it runs targeted-DLR APGD
    toward each of the `target_classes` highest-scoring other classes by clean logit in turn (`restarts` runs each),
    each on the points still standing (None: AutoAttack's 9, at most K-1). It picks its own targets: `target` must
    stay unset. Needs 4 classes."""

    name: ClassVar[str] = "apgd-t"
    description: ClassVar[str] = "pushes toward each of the highest-scoring other classes in turn"
    picks_own_targets: ClassVar[bool] = True  # its targets come from the clean logits: `target` is refused
    target_classes: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target is not None:
            raise AuditError(f"method {self.name} picks its own targets; allowed: leave target unset")
        if self.target_classes is not None and self.target_classes < 1:
            raise AuditError(f"target classes {self.target_classes}; allowed: 1 .. K-1 (K: the model's classes)")

    def check_classes(self, classes: int) -> None:
        super().check_classes(classes)
        self._target_count(classes)

    def _target_count(self, classes: int) -> int:
        """How many other classes each point is pushed toward, for a model with `classes` logits."""
        if classes < 4:
            raise AuditError(
                f"method {self.name} with {classes} classes; allowed: a model with at least 4 classes (targeted DLR)"
            )
        count = min(DEFAULT_TARGET_CLASSES, classes - 1) if self.target_classes is None else self.target_classes
        if not 1 <= count <= classes - 1:
            raise AuditError(f"target classes {count}; allowed: 1 .. {classes - 1} (the model has {classes} classes)")
        return count

    @property
    def run_label(self) -> str:
        """apgd-t, with its steps when they are not 100."""
        return self._label("apgd-t")

    def _perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        generator: torch.Generator,
    ) -> Perturbed:
        with torch.no_grad():
            logits = model(x).float()
        count = self._target_count(logits.shape[1])
        # The other classes by clean logit, highest first (the label itself set aside, whatever the ties).
        ranked = logits.scatter(1, y.view(-1, 1), -float("inf")).argsort(dim=1, descending=True, stable=True)
        kept = _Kept.start(x, evaluations=len(x))
        for rank in range(count):
            self._runs(model, x, y, ranked[:, rank], _dlr, _off_label, generator, kept)
        return kept.perturbed()
