"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, "Minimally distorted adversarial examples with a
fast adaptive boundary attack", ICML 2020), as the AutoAttack ensemble runs it: a minimum-norm attack that, for each of
the highest-scoring other classes in turn, linearizes the boundary between the label and that class at the current
iterate, projects onto it (inside the [0, 1] box), and steps with a bias toward the clean image. A point counts as
broken only if an adversarial within eps was found; the kept adversarial is the smallest one of the run that found it.

Norms Linf and L2 (the paper's L1 is not one of auditnn's norms). Followed from the reference (AutoAttack's
fab_base.py): alpha_max 0.1, eta 1.05, beta 0.9, 100 iterations, one start per target class, the target classes
ranked by clean logit, restarts on the sphere of radius eps/2, the projection's choice of the box corner where the
hyperplane misses the box, and no final search. Departures: the change of w . z each projection must make is
computed directly (-f, and -f + g . (x1 - x0)) instead of as b - w . x with b = w . x1 - f, which loses digits to
cancellation; the projection finds its segment by counting the breakpoints below the target instead of by
bisection (the same answer); with a given `target` (not part of AutoAttack) the boundary linearized is the one
between the target and the strongest other class at the iterate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ..errors import AuditError
from .base import Attack, Perturbed, finite_, is_adversarial, register_attack, unusable_gradient

ALPHA_MAX = 0.1  # the paper's alpha_max: the largest weight of the step taken from the clean image
ETA = 1.05  # the paper's eta: overshoot past the linearized boundary
BETA = 0.9  # the paper's beta: an adversarial iterate is pulled back to beta x its perturbation
DEFAULT_STEPS = 100  # AutoAttack's FAB-T iterations per target class
DEFAULT_TARGET_CLASSES = 9  # AutoAttack's n_target_classes (capped at K - 1 when the setting is left unset)
TINY = 1e-8  # the reference's floor under the two projection lengths in the bias weight alpha
TINY_RATE = 1e-30  # floor under a divisor that is positive whenever it is used
# How far each coordinate moves per unit of the projection's multiplier, given |w| per coordinate: Linf moves every
# coordinate by the same radius, L2 along w. A norm without a rule here is not taken by FAB (FAB.norms).
SPEEDS = {"linf": torch.ones_like, "l2": lambda gain: gain}


def box_step(points: torch.Tensor, w: torch.Tensor, need: torch.Tensor, norm: str) -> torch.Tensor:
    """The smallest step d (in `norm`, linf or l2) with w . d = need and points + d inside the box [0, 1]; when no
    step inside the box reaches, the step to the box corner that changes w . z the most toward the target value.

    points, w: (n, D); need: (n,). Returns d: (n, D). Exact (the paper's projection onto the hyperplane inside the
    box): moving
    coordinate i toward the side that changes w . z in the wanted direction, by min(s x speed_i, room_i) for a
    multiplier s >= 0, where speed_i = 1 (linf: every coordinate moves by the same radius s until it meets the box) or
    |w_i| (l2: the KKT solution d = clip(s w, box)), changes w . z by h(s) = sum_i |w_i| min(s speed_i, room_i), a
    nondecreasing piecewise-linear function; the smallest step is the one at the smallest s with h(s) = |need|, found
    from the sorted breakpoints room_i / speed_i in one pass (vectorized over the batch)."""
    sign = torch.where(need < 0, -1.0, 1.0).to(w.dtype)
    v = w * sign.unsqueeze(1)  # with v the change wanted is |need| >= 0
    want = need.abs()
    gain = v.abs()  # change of v . z per unit move of a coordinate
    used = gain > 0
    room = torch.where(v > 0, 1 - points, points) * used  # how far a coordinate can move in its useful direction
    speed = SPEEDS[norm](gain)
    knee = torch.where(used, room / torch.where(used, speed, 1.0), torch.inf)  # s at which a coordinate saturates
    order = knee.argsort(dim=1)
    knee_s, gain_s, speed_s, room_s = (t.gather(1, order) for t in (knee, gain, speed, room))
    saturated = torch.cumsum(gain_s * room_s, dim=1)  # the change from the coordinates saturated up to each knee
    rate = gain_s * speed_s
    # rate_from[:, k]: the slope of h between knee k-1 and knee k (the coordinates not yet saturated), as a reverse
    # cumulative sum so that it is exactly 0 past the last used coordinate.
    rate_from = torch.flip(torch.cumsum(torch.flip(rate, dims=(1,)), dim=1), dims=(1,))
    rate_after = torch.nn.functional.pad(rate_from[:, 1:], (0, 1))
    at_knee = saturated + torch.where(rate_after > 0, knee_s * rate_after, 0.0)  # h at each knee
    k = (at_knee < want.unsqueeze(1)).sum(1, keepdim=True)  # knees passed before h reaches |need|
    reachable = k.squeeze(1) < w.shape[1]
    k_in = k.clamp(max=w.shape[1] - 1)
    before = torch.where(k_in > 0, saturated.gather(1, (k_in - 1).clamp(min=0)), 0.0).squeeze(1)
    slope = rate_from.gather(1, k_in).squeeze(1)
    s = torch.where(reachable, (want - before) / slope.clamp_min(TINY_RATE), torch.inf)
    move = torch.where(used, torch.minimum(s.unsqueeze(1) * speed, room), 0.0)
    return move * torch.sign(v)


def project_onto_hyperplane(points: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """The FAB projection: the smallest step d (linf or l2) that takes each point onto the hyperplane w . z = b while
    staying in the box [0, 1]; where the hyperplane misses the box, the step to the box corner nearest to it (in
    the sense of w . z). points, w: (n, D); b: (n,). Returns d: (n, D)."""
    return box_step(points, w, b - (w * points).sum(1), norm)


@register_attack
@dataclass
class FAB(Attack):
    """steps: iterations per target and start (>= 1; AutoAttack's FAB-T: 100). restarts: starts per target class,
    the first at the clean image, the others on the sphere of radius eps/2 around it. target_classes: how many of
    the highest-scoring other classes (by clean logit) each point is pushed toward, in order, each only on the
    points still standing; unset: 9 (AutoAttack's), or K-1 when the model has fewer classes.

    With `target` set, FAB pushes each point toward its given target instead (the boundary linearized is the one
    between the target and the strongest other class at the iterate) and target_classes is not used."""

    name: ClassVar[str] = "fab"
    description: ClassVar[str] = "finds the smallest perturbation across linearized decision boundaries"
    norms: ClassVar[tuple[str, ...]] = tuple(SPEEDS)
    minimum_norm: ClassVar[bool] = True  # it returns the smallest adversarial it found, not one at the ball's edge
    steps: int = DEFAULT_STEPS
    restarts: int = 1
    target_classes: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_classes is not None and self.target_classes < 1:
            raise AuditError(f"target classes {self.target_classes}; allowed: 1 .. K-1 (K: the model's classes)")

    @property
    def run_label(self) -> str:
        """fab-t (AutoAttack's name), or fab with a given target; with its steps when they are not the default 100
        (so that the sanity run with twice the steps has a name of its own beside the headline)."""
        label = "fab-t" if self.target is None else "fab"
        return label if self.steps == DEFAULT_STEPS else f"{label}-{self.steps}"

    def memory_copies(self) -> int:
        """FAB's: its iterate, best, the gradients of two logits, and the projection's sort over a (2n, D) array
        with its indices."""
        return 16

    def check_classes(self, classes: int) -> None:
        super().check_classes(classes)
        if self.target is None:
            self.target_count(classes)

    def target_count(self, classes: int) -> int:
        """How many other classes each point is pushed toward, for a model with `classes` logits."""
        if self.target_classes is None:
            return min(DEFAULT_TARGET_CLASSES, classes - 1)
        if not 1 <= self.target_classes <= classes - 1:
            raise AuditError(
                f"target classes {self.target_classes}; allowed: 1 .. {classes - 1} (the model has {classes} classes)"
            )
        return self.target_classes

    def _perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        generator: torch.Generator,
    ) -> Perturbed:
        n = len(x)
        best = x.clone()
        broken = torch.zeros(n, dtype=torch.bool, device=x.device)
        zero_grad = torch.zeros(n, dtype=torch.bool, device=x.device)
        evaluations = 0
        if targets is None:
            with torch.no_grad():
                logits = model(x).float()
            evaluations += n
            count = self.target_count(logits.shape[1])
            # The highest-scoring other classes by clean logit, best first (the label's own logit left out).
            ranked = logits.scatter(1, y.unsqueeze(1), -torch.inf).argsort(dim=1, descending=True)
            goals = [ranked[:, i] for i in range(count)]
        else:
            goals = [targets]
        first = True
        for goal in goals:
            for restart in range(self.restarts):
                idx = torch.nonzero(~broken).view(-1)  # only the points still standing are attacked again
                if not len(idx):
                    break
                t = None if targets is None else targets[idx]
                found, norms, unusable, spent = self._single_run(
                    model, x[idx], y[idx], goal[idx], t, restart > 0, generator
                )
                evaluations += spent
                if first:
                    zero_grad[idx] = unusable
                    first = False
                hit = norms <= self.eps
                best[idx[hit]] = found[hit]
                broken[idx[hit]] = True
        return Perturbed(best, broken, zero_grad, evaluations)

    def _single_run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        goal: torch.Tensor,
        targets: torch.Tensor | None,
        random_start: bool,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """One FAB run of `steps` iterations toward the class `goal` of each point. Returns the smallest adversarial
        found per point (the clean image where none), its norm (inf where none), whether the first gradient was
        unusable, and the forward(+backward) passes over single images it took."""
        geometry, shape, n = self.geometry, x.shape, len(x)
        x0 = x.flatten(1)
        x1 = x0.clone()
        if random_start:  # on the sphere of radius eps/2, as the reference's restarts
            delta = geometry.random_start(shape, self.eps, generator).to(x.device).flatten(1)
            delta = delta * (0.5 * self.eps / geometry.norm(delta).clamp_min(TINY_RATE)).unsqueeze(1)
            x1 = (x0 + delta).clamp(0.0, 1.0)
        best = x0.clone()
        best_norm = torch.full((n,), torch.inf, device=x.device)
        unusable = torch.zeros(n, dtype=torch.bool, device=x.device)
        spent = 0
        for step in range(self.steps):
            f, g = boundary_gap(model, x1.view(shape), y, goal, targets)
            spent += n
            if step == 0:
                unusable = unusable_gradient(g)
            finite_(g)
            # The linearized boundary f(x1) + g . (z - x1) = 0, reached from x1 and from the clean image x0.
            need = torch.cat([-f, -f + (g * (x1 - x0)).sum(1)])
            d = box_step(torch.cat([x1, x0]), torch.cat([g, g]), need, self.norm)
            d1, d2 = d[:n], d[n:]
            a1, a2 = geometry.norm(d1).clamp_min(TINY), geometry.norm(d2).clamp_min(TINY)
            alpha = (a1 / (a1 + a2)).clamp(0.0, ALPHA_MAX).unsqueeze(1)
            x1 = ((x1 + ETA * d1) * (1 - alpha) + (x0 + ETA * d2) * alpha).clamp(0.0, 1.0)
            with torch.no_grad():
                logits = model(x1.view(shape)).float()
            spent += n
            adversarial = is_adversarial(logits, y, targets)
            size = geometry.norm(x1 - x0)
            better = adversarial & (size < best_norm)
            best = torch.where(better.unsqueeze(1), x1, best)
            best_norm = torch.where(better, size, best_norm)
            # An adversarial iterate is pulled back toward the clean image, to look for a smaller one.
            x1 = torch.where(adversarial.unsqueeze(1), x0 + BETA * (x1 - x0), x1)
        return best.view(shape), best_norm, unusable, spent


def boundary_gap(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, goal: torch.Tensor, targets: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward+backward. Returns f = z_goal - z_rival per point, (n,), and its input gradient flattened, (n, D):
    the rival is the label (FAB-T: cross the boundary between the label and the goal class) or, with targets, the
    strongest other class than the target at x (the boundary the target must cross). f < 0 before the boundary."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()
        if targets is None:
            rival = y
        else:
            rival = logits.detach().scatter(1, goal.unsqueeze(1), -torch.inf).argmax(1)
        f = logits.gather(1, goal.unsqueeze(1)).squeeze(1) - logits.gather(1, rival.unsqueeze(1)).squeeze(1)
        (grad,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), grad.contiguous().flatten(1)  # contiguous: a constant model hands back an expanded zero
