"""The shared attack contract: pixel space [0, 1], eval mode, input gradients only, per-sample losses summed,
batching and device, early exit, and a check on exit that every perturbation is inside its eps-ball and the box."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar, final

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import AuditError, InvariantError, allowed
from ..inference import check_logits, eval_mode, frozen_parameters, model_device
from ..memory import DEFAULT_COPIES
from ..runtime import batch_generator, gather_parts, my_batches, split_on_oom
from .norms import NORMS, Norm

TARGET_MODES = ("random", "least-likely")
COUNTS = ("steps", "restarts", "queries")  # settings that count something: refused below 1 by Attack itself
BOUND_SLACK = 1e-6  # float32 rounding allowed beyond eps when checking the ball


@dataclass
class AttackResult:
    """Per-sample outcome. adversarial: (N, C, H, W) in [0, 1]; the rest (N,).

    counted: the points every figure counts; untargeted, all of them; targeted, those whose label is not their
    target (a point already of the target class cannot be pushed to it). robust: counted, correct before the attack,
    and still correct (untargeted) or target not reached (targeted); points wrong before the attack are not robust
    and are not attacked."""

    adversarial: torch.Tensor | None  # None: an evaluation kept the per-sample numbers only
    labels: torch.Tensor
    clean_correct: torch.Tensor
    robust: torch.Tensor
    adversarial_prediction: torch.Tensor
    perturbation_norm: torch.Tensor  # in the attack's norm, pixel units
    zero_gradient: torch.Tensor  # bool: the first input gradient was all zero or had a non-finite entry
    counted: torch.Tensor
    targets: torch.Tensor | None = None
    seconds: float = 0.0
    gradient_evaluations: int = 0  # forward+backward passes over single images, summed
    oom_retries: int = 0  # halvings of batches that ran out of memory, CUDA or CPU (0: none)
    broken_by: torch.Tensor | None = None  # an ensemble's: (N,) int64 index of the attack that broke it, -1 if none

    @property
    def attacked(self) -> torch.Tensor:
        """(N,) bool: the points the attack tried to break (counted and correct before the attack)."""
        return self.clean_correct & self.counted

    @property
    def left_out(self) -> int:
        """Targeted: how many points were left out of the figures because their label is their target."""
        return int((~self.counted).sum())

    @property
    def clean_accuracy(self) -> float:
        return share_of(self.clean_correct, self.counted)

    @property
    def robust_accuracy(self) -> float:
        return share_of(self.robust, self.counted)

    @property
    def success_rate(self) -> float:
        """Share of the attacked points (counted, correct before the attack) that the attack broke (moved off
        their label, or onto their target if targeted)."""
        return share_of(~self.robust, self.attacked)


def share_of(mask: torch.Tensor, among: torch.Tensor) -> float:
    """Share of `among` where `mask` holds; 0 when `among` is empty."""
    return float(mask[among].float().mean()) if among.any() else 0.0


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """The quantity each attack maximizes, per sample: CE to the label, or minus CE to the target."""
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def is_adversarial(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    pred = logits.argmax(1)
    return pred != labels if targets is None else pred == targets


def input_gradient(
    model: nn.Module, x: torch.Tensor, labels, targets
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward+backward with respect to the input. Returns (logits, per-sample loss, d loss / d x) where the
    loss differentiated is the per-sample losses summed (not averaged: a gradient does not shrink with the batch).
    The gradient may hold NaN or infinite entries (a sqrt or log of a black pixel): pass it through `finite_`
    before stepping."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()
        losses = per_sample_loss(logits, labels, targets)
        (grad,) = torch.autograd.grad(losses.sum(), x)
    return logits.detach(), losses.detach(), grad


def unusable_gradient(grad: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the input gradient was all zero or had a NaN or infinite entry (a sign of gradient masking)."""
    flat = grad.flatten(1)
    return (flat.abs().sum(1) == 0) | ~torch.isfinite(flat).all(1)


def finite_(grad: torch.Tensor) -> torch.Tensor:
    """Set NaN and infinite gradient entries to 0, in place, so that a step (and an L2 normalization) stays finite;
    one elementwise pass, cheap next to the forward+backward that made the gradient."""
    return torch.nan_to_num_(grad, nan=0.0, posinf=0.0, neginf=0.0)


def choose_targets(
    mode: str | int, logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """A class index, 'random' (uniform over the other classes) or 'least-likely' (lowest clean logit)."""
    k = logits.shape[1]
    if isinstance(mode, int):
        if not 0 <= mode < k:
            raise AuditError(f"target class {mode} is out of range; allowed: 0 .. {k - 1}, random or least-likely")
        return torch.full_like(labels, mode)
    if mode == "random":
        offset = torch.randint(1, k, labels.shape, generator=generator).to(labels.device)
        return (labels + offset) % k
    if mode == "least-likely":
        return logits.argmin(1)
    raise AuditError(f"target '{mode}' is unknown; allowed: a class index, random or least-likely")


@dataclass
class Perturbed:
    """What `_perturb` hands back for the n points it attacked."""

    adversarial: torch.Tensor  # (n, C, H, W) in [0, 1], each inside the eps-ball of its clean image
    broken: torch.Tensor  # (n,) bool: the attack saw the point adversarial (the final forward in `run` decides)
    zero_gradient: torch.Tensor  # (n,) bool: the first input gradient was all zero or had a non-finite entry
    gradient_evaluations: int  # forward(+backward) passes over single images, summed
    broken_by: torch.Tensor | None = None  # (n,) int64: an ensemble's index of the attack that broke the point, -1


@dataclass
class Attack(ABC):
    """Base class. `run` is final: it does the shared work and calls `_perturb` on the points worth attacking; a
    subclass writes only `_perturb` and says, through its class variables and properties, what it is.

    eps: radius in the attack's norm, pixel units of [0, 1]. targeted: with `target` (class, 'random' or
    'least-likely') the attack pushes every point to its target instead of away from its label.
    """

    name: ClassVar[str] = ""  # the key in ATTACKS, and the method a spec names
    description: ClassVar[str] = ""  # what it does, in a few words, for the messages that refuse settings it ignores
    norms: ClassVar[tuple[str, ...]] = tuple(NORMS)  # the norms it can attack in
    uses_gradients: ClassVar[bool] = True  # False: a score-based attack (it queries the model's outputs only)
    picks_own_targets: ClassVar[bool] = False  # True: its targets come from the clean logits, `target` is refused
    minimum_norm: ClassVar[bool] = False  # True: it returns the smallest adversarial it found, not one at the edge
    # whether an evaluation adds the sanity runs (FGSM at each eps, twice the steps, Linf eps 0.5) to an attack that
    # takes steps; an ensemble brings its own check (a gradient-free member) instead
    sanity_runs: ClassVar[bool] = True
    eps: float = 8 / 255
    norm: str = "linf"
    target: int | str | None = None
    seed: int = 0
    batch_size: int = 512

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for final_method in ("run", "attack_batch"):
            overriding = [k for k in cls.__mro__[: cls.__mro__.index(Attack)] if final_method in vars(k)]
            if overriding:  # typing.final alone is only read by type checkers; a mixin's method would win over Attack's
                raise TypeError(
                    f"{cls.__name__} overrides Attack.{final_method}, which is final; write the attack in _perturb"
                )

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise AuditError(f"norm '{self.norm}' is unknown; allowed: {allowed(NORMS)}")
        if self.norm not in self.norms:
            takers = [name for name, cls in ATTACKS.items() if self.norm in cls.norms]
            raise AuditError(
                f"method {self.name} takes norm {allowed(self.norms)} only, got '{self.norm}'; "
                f"use {allowed(takers)} for {self.norm}"
            )
        top = self.geometry.max_eps
        if not 0 <= self.eps <= top:
            raise AuditError(
                f"eps {self.eps:g} is outside [0, {top:g}] for norm {self.norm}; allowed: 0 <= eps <= {top:g}"
            )
        if isinstance(self.target, str) and self.target not in TARGET_MODES:
            raise AuditError(f"target '{self.target}' is unknown; allowed: a class index, random or least-likely")
        if self.batch_size < 1:
            raise AuditError(f"batch size {self.batch_size}; allowed: at least 1")
        for name in COUNTS:  # the counts an attack takes (steps, restarts, queries) are at least 1
            value = getattr(self, name, 1)
            if value is not None and value < 1:
                raise AuditError(f"{name} {value}; allowed: at least 1")

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """The names of the settings this attack takes: its dataclass fields, in order."""
        return tuple(f.name for f in fields(cls) if f.init)

    @property
    def geometry(self) -> Norm:
        return NORMS[self.norm]

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def run_label(self) -> str:
        """How this run is named beside the headline figure (AttackRow.robust_accuracy_per_attack)."""
        return self.name

    @property
    def step_count(self) -> int:
        """Gradient steps per start: its `steps` setting, 1 for an attack without one."""
        steps = getattr(self, "steps", 1)
        return 1 if steps is None else int(steps)

    def memory_copies(self) -> int:
        """Image-sized tensors per attacked image this attack holds at once besides the model's activations, for the
        memory probe (memory.DEFAULT_COPIES is PGD's count: batch, clone, subset, best, start, run best, gradient,
        noise)."""
        return DEFAULT_COPIES

    def check_classes(self, classes: int) -> None:
        """Refuse, before any work, a setting that a model with `classes` logits cannot serve (an attack that needs
        more classes, more target classes than there are). The attack checks again where it uses them."""
        if isinstance(self.target, int) and not 0 <= self.target < classes:
            raise AuditError(
                f"target class {self.target} is out of range; allowed: 0 .. {classes - 1}, random or least-likely"
            )

    @property
    def gradient_free_labels(self) -> tuple[str, ...]:
        """An ensemble's attacks that use no gradient (what they break, the gradient attacks could not)."""
        return ()

    @property
    def component_labels(self) -> tuple[str, ...]:
        """An ensemble's attacks, in the order they run (their run labels); empty for a single attack. An ensemble's
        Perturbed.broken_by indexes this."""
        return ()

    @property
    def restart_count(self) -> int:
        """Starts per point: its `restarts` setting, 1 for an attack without one."""
        return int(getattr(self, "restarts", 1))

    @final
    def run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> AttackResult:
        """images: (N, C, H, W) float32 in [0, 1]; labels: (N,) int64. The model returns (N, K) logits.

        Under torchrun each process attacks a contiguous run of whole batches and the per-sample results are
        gathered in order; random draws are seeded per global batch, so any number of processes gives the same
        numbers. On CUDA, a batch that runs out of memory is retried in halves (recorded in the result)."""
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise AuditError(
                f"images of shape {tuple(images.shape)} with {labels.shape[0]} labels; allowed: (N, C, H, W) and N labels"
            )
        mine = my_batches(len(labels), self.batch_size)
        parts: list[AttackResult] = []
        start = time.perf_counter()
        for index, begin, end in mine:
            parts.append(self.attack_batch(model, images[begin:end], labels[begin:end], index))
        result = concat_results(gather_parts([concat_results(parts, like=images)] if parts else []), like=images)
        if len(result.labels) and not result.counted.any():
            raise AuditError(
                f"target {self.target}: every image's label is its target, so no image is left to attack; "
                "allowed: a target class that some images do not have"
            )
        result.seconds = time.perf_counter() - start
        return result

    @final
    def attack_batch(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, index: int) -> AttackResult:
        """One batch: images (n, C, H, W) float32 in [0, 1] and labels (n,), the batch numbered `index` in the
        evaluation's order (its random draws are seeded by it, so the same batch gives the same numbers whoever
        runs it and whatever ran before). The result is on the CPU, its perturbations checked against the ball and
        the box; `seconds` is the time this batch took. On CUDA (or on a CPU allocation failure) a batch that runs
        out of memory is retried in halves (recorded in oom_retries)."""
        device = model_device(model)
        start = time.perf_counter()
        with eval_mode(model), frozen_parameters(model):
            parts = self._run_with_retry(model, images, labels, device, batch_generator(self.seed, index))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result = concat_results(parts, like=images)
        self._check_bounds(images.cpu(), result)
        result.seconds = time.perf_counter() - start
        return result

    def _run_with_retry(self, model, x, y, device, generator) -> list[AttackResult]:  # noqa: ANN001
        parts = split_on_oom(lambda xs, ys: [self._run_batch(model, xs.to(device), ys.to(device), generator)], x, y)
        parts[0].oom_retries = len(parts) - 1  # halvings this batch needed: one batch became len(parts)
        return parts

    def _run_batch(self, model, x, y, generator) -> AttackResult:  # noqa: ANN001
        with torch.no_grad():
            logits = model(x).float()
        check_logits(logits, len(x))
        targets = None if self.target is None else choose_targets(self.target, logits, y, generator)
        clean_pred = logits.argmax(1)
        clean_correct = clean_pred == y
        counted = torch.ones_like(clean_correct) if targets is None else targets != y
        adversarial = x.clone()
        final_pred = clean_pred.clone()
        zero_grad = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        # an ensemble says which of its attacks broke each point (-1: none, or not attacked)
        broken_by = torch.full((len(x),), -1, dtype=torch.long, device=x.device) if self.component_labels else None
        evaluations = len(x)
        # Early exit: a point already wrong, or left out (its label is its target), needs no attack.
        todo = torch.nonzero(clean_correct & counted).view(-1)
        if len(todo) and self.eps > 0:
            t = None if targets is None else targets[todo]
            done = self._perturb(model, x[todo], y[todo], t, generator)
            adversarial[todo] = done.adversarial
            zero_grad[todo] = done.zero_gradient
            if broken_by is not None:
                if done.broken_by is None:
                    raise InvariantError(f"{self.name} is an ensemble but did not say which attack broke each point")
                broken_by[todo] = done.broken_by
            with torch.no_grad():  # score the kept iterates; untouched points keep their clean prediction
                final_pred[todo] = model(done.adversarial).float().argmax(1)
            evaluations += done.gradient_evaluations + len(todo)
        reached = final_pred != y if targets is None else final_pred == targets
        # The final forward is authoritative: a point counts as broken only if its kept iterate is adversarial.
        robust = clean_correct & counted & ~reached
        if broken_by is not None:  # an attack the final forward does not confirm broke nothing
            broken_by = torch.where(robust | ~(clean_correct & counted), -1, broken_by)
        return AttackResult(
            adversarial=adversarial.cpu(),
            labels=y.cpu(),
            clean_correct=clean_correct.cpu(),
            robust=robust.cpu(),
            adversarial_prediction=final_pred.cpu(),
            perturbation_norm=self.geometry.norm(adversarial - x).cpu(),
            zero_gradient=zero_grad.cpu(),
            counted=counted.cpu(),
            targets=None if targets is None else targets.cpu(),
            gradient_evaluations=evaluations,
            broken_by=None if broken_by is None else broken_by.cpu(),
        )

    @abstractmethod
    def _perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        generator: torch.Generator,
    ) -> Perturbed:
        """The attack itself, on points correct before it (and not of their target). x: (n, C, H, W) in [0, 1];
        y: (n,) labels; targets: (n,) or None (untargeted). The model is in eval mode with frozen parameters."""

    def _check_bounds(self, images: torch.Tensor, result: AttackResult) -> None:
        adv = result.adversarial
        if adv is None:
            raise InvariantError(f"{self.name} returned no adversarial images to check")
        if not torch.isfinite(adv).all():
            raise InvariantError(f"{self.name} produced NaN or infinite pixels")
        if adv.min() < 0 or adv.max() > 1:
            raise InvariantError(f"{self.name} left the [0, 1] box: range [{adv.min():.6f}, {adv.max():.6f}]")
        worst = float(self.geometry.norm(adv - images).max()) if len(adv) else 0.0
        if worst > self.eps + BOUND_SLACK:
            raise InvariantError(f"{self.name} left its {self.norm} ball: norm {worst:.8f} > eps {self.eps:.8f}")


def concat_results(parts: list[AttackResult], like: torch.Tensor) -> AttackResult:
    """One result from batch results, in order; an empty result (shaped like `like`) when there are none."""
    if not parts:
        empty = torch.zeros(0, dtype=torch.bool)
        return AttackResult(
            like[:0],
            torch.zeros(0, dtype=torch.long),
            empty,
            empty,
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0),
            empty,
            empty,
        )

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(p, name) for p in parts])

    return AttackResult(
        None if parts[0].adversarial is None else cat("adversarial"),
        cat("labels"),
        cat("clean_correct"),
        cat("robust"),
        cat("adversarial_prediction"),
        cat("perturbation_norm"),
        cat("zero_gradient"),
        cat("counted"),
        targets=None if parts[0].targets is None else cat("targets"),
        broken_by=None if parts[0].broken_by is None else cat("broken_by"),
        gradient_evaluations=sum(p.gradient_evaluations for p in parts),
        oom_retries=sum(p.oom_retries for p in parts),
    )


ATTACKS: dict[str, type[Attack]] = {}


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: ATTACKS[cls.name] = cls; a name registered twice, or a class without a name and a
    description, is an error."""
    if cls.name in ATTACKS:
        raise ValueError(f"attack '{cls.name}' is registered twice")
    if not cls.name or not cls.description:
        raise ValueError(f"attack class {cls.__name__} needs a name and a description")
    ATTACKS[cls.name] = cls
    return cls


def attack_class(method: str) -> type[Attack]:
    if method not in ATTACKS:
        raise AuditError(f"method '{method}' is unknown; allowed: {allowed([*ATTACKS, 'patch'])}")
    return ATTACKS[method]


def make_attack(method: str, **kwargs: object) -> Attack:
    return attack_class(method)(**kwargs)  # type: ignore[arg-type]
