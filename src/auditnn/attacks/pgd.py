"""PGD (Madry et al. 2018) in any registered norm: random start in the ball, steepest-ascent steps and projection
from the norm's geometry, per-sample restarts, the most adversarial iterate kept per sample, and early exit for broken
points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ..errors import AuditError
from ..values import fmt_eps
from .base import (
    Attack,
    Perturbed,
    finite_,
    input_gradient,
    is_adversarial,
    per_sample_loss,
    register_attack,
    unusable_gradient,
)


@register_attack
@dataclass
class PGD(Attack):
    """steps: gradient steps per restart (>= 1). step_size: pixel units; default 2.5 * eps / steps.
    restarts: independent random starts; a point is robust only if it survives every one.
    random_start: start uniformly inside the ball (off: start at the clean image).
    early_exit: stop updating a point once it is broken (robust accuracy is the same; it only saves work)."""

    name: ClassVar[str] = "pgd"
    description: ClassVar[str] = "takes projected gradient steps from random starts in the ball"
    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    early_exit: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_size is not None and not self.step_size > 0:
            raise AuditError(f"step size {self.step_size}; allowed: > 0")

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    @property
    def run_label(self) -> str:
        """pgd-10 (its steps), with its step size when that is not the default."""
        label = f"pgd-{self.steps}"
        return label if self.step_size is None else f"{label} step {fmt_eps(self.step_size)}"

    def _perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        generator: torch.Generator,
    ) -> Perturbed:
        geometry, alpha = self.geometry, self.alpha
        n = len(x)
        best = x.clone()
        best_loss = torch.full((n,), -float("inf"), device=x.device)
        broken = torch.zeros(n, dtype=torch.bool, device=x.device)
        zero_grad = torch.zeros(n, dtype=torch.bool, device=x.device)
        evaluations = 0
        for restart in range(self.restarts):
            # Restarts are scored per sample: only points that survived every earlier restart are attacked again.
            idx = torch.nonzero(~broken).view(-1)  # batch positions of the points still being updated
            if not len(idx):
                break
            x0, y0 = x[idx], y[idx]
            t0 = None if targets is None else targets[idx]
            adv = x0
            if self.random_start:
                adv = (x0 + geometry.random_start(x0.shape, self.eps, generator).to(x.device)).clamp(0.0, 1.0)
            # This restart's best iterate of each active point, kept on the active subset (no scattered writes).
            run_best, run_loss = best[idx], best_loss[idx]
            run_hit = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
            for step in range(self.steps + 1):
                last = step == self.steps
                if not last:
                    logits, loss, grad = input_gradient(model, adv, y0, t0)
                    if restart == 0 and step == 0:
                        zero_grad[idx] = unusable_gradient(grad)
                    finite_(grad)
                else:
                    with torch.no_grad():
                        logits = model(adv).float()
                    loss = per_sample_loss(logits, y0, t0)
                evaluations += len(idx)
                hit = is_adversarial(logits, y0, t0)
                # The most adversarial iterate: the first one that breaks the point, else the highest loss.
                better = ~run_hit & (hit | (loss > run_loss))
                run_best = torch.where(better.view(-1, 1, 1, 1), adv, run_best)
                run_loss = torch.where(better, loss, run_loss)
                run_hit |= hit
                # Broken points leave in groups (an eighth of the active set at a time): the compaction costs
                # several gathers, and for small models a few extra steps on broken points cost less.
                if last or (self.early_exit and int(run_hit.sum()) * 8 >= len(idx)):
                    # Points that leave (broken ones under early exit, all at the end) hand back their best iterate.
                    leaving = torch.ones_like(hit) if last else run_hit
                    out = idx[leaving]
                    best[out], best_loss[out] = run_best[leaving], run_loss[leaving]
                    broken[out] |= run_hit[leaving]
                    keep = ~leaving
                    if last or not keep.any():
                        break
                    idx, x0, y0, adv, grad = idx[keep], x0[keep], y0[keep], adv[keep], grad[keep]
                    run_best, run_loss, run_hit = run_best[keep], run_loss[keep], run_hit[keep]
                    t0 = None if t0 is None else t0[keep]
                adv = (x0 + geometry.project(adv + geometry.direction(grad, alpha) - x0, self.eps)).clamp(0.0, 1.0)
        return Perturbed(best, broken, zero_grad, evaluations)
