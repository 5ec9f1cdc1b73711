"""Norm geometry, one class per norm: random start in the eps-ball, steepest-ascent step direction, projection onto
the ball and the per-sample norm, all in pixel units of [0, 1] (as Foolbox's LinfBaseGradientDescent and
L2BaseGradientDescent split them). Attacks take their geometry from NORMS and never branch on the norm's name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

MAX_L2_EPS = 1e4  # pixel units; sqrt(3 x 1024 x 1024) = 1774 spans a megapixel RGB image
TINY_NORM = 1e-12  # floor under a divisor norm: an all-zero gradient or perturbation stays zero instead of NaN


class Norm(ABC):
    """The geometry of one norm. Tensors are (N, ...) batches; every norm is taken per sample over all other dims.

    name: the key in NORMS. max_eps: the largest radius an attack may take, pixel units."""

    name: ClassVar[str] = ""
    max_eps: ClassVar[float] = 0.0

    @abstractmethod
    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """delta: (N, ...) -> (N,) its norm per sample."""

    @abstractmethod
    def random_start(self, shape: torch.Size, eps: float, generator: torch.Generator) -> torch.Tensor:
        """A perturbation of `shape` drawn uniformly from the ball of radius eps. generator: a CPU generator; the
        draw is a CPU tensor, so a seed gives the same start on every device (the caller moves it)."""

    @abstractmethod
    def direction(self, grad: torch.Tensor, length: float = 1.0) -> torch.Tensor:
        """The step of this norm's size `length` that raises a loss with input gradient `grad` the most, per sample
        (its inner product with grad is length x the dual norm of grad). grad: (N, ...) finite."""

    @abstractmethod
    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """The nearest point of the ball of radius eps to each sample of delta: (N, ...) -> (N, ...)."""


NORMS: dict[str, Norm] = {}


def register_norm(cls: type[Norm]) -> type[Norm]:
    """Class decorator: NORMS[cls.name] = cls(); a name registered twice is an error."""
    if cls.name in NORMS:
        raise ValueError(f"norm '{cls.name}' is registered twice")
    NORMS[cls.name] = cls()
    return cls


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1), to broadcast against `like`."""
    return values.view(-1, *([1] * (like.dim() - 1)))


@register_norm
class Linf(Norm):
    name = "linf"
    max_eps = 1.0  # a radius of 1 already lets every pixel reach either end of [0, 1]

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(1)

    def random_start(self, shape: torch.Size, eps: float, generator: torch.Generator) -> torch.Tensor:
        """Each pixel uniform in [-eps, eps]."""
        return (torch.rand(shape, generator=generator) * 2 - 1) * eps

    def direction(self, grad: torch.Tensor, length: float = 1.0) -> torch.Tensor:
        """length x sign(grad): a zero gradient entry leaves its pixel where it is."""
        return length * grad.sign()

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        return delta.clamp(-eps, eps)


@register_norm
class L2(Norm):
    name = "l2"
    # A ball of radius sqrt(C*H*W) already holds every image; radii past MAX_L2_EPS only overflow float32.
    max_eps = MAX_L2_EPS

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(p=2, dim=1)

    def random_start(self, shape: torch.Size, eps: float, generator: torch.Generator) -> torch.Tensor:
        """Uniform in the ball: a Gaussian direction, and radius eps * U^(1/d) (d: values per sample), because the
        volume inside radius r grows as r^d."""
        n, d = shape[0], int(torch.tensor(shape[1:]).prod())
        direction = torch.randn(n, d, generator=generator)
        direction /= direction.norm(dim=1, keepdim=True).clamp_min(TINY_NORM)
        radius = eps * torch.rand(n, 1, generator=generator) ** (1.0 / d)
        return (direction * radius).view(shape)

    def direction(self, grad: torch.Tensor, length: float = 1.0) -> torch.Tensor:
        """length x grad / ||grad||_2, computed as (length x grad) / norm: that rounding order is the one the
        figures recorded before this class existed were made with."""
        return length * grad / _per_sample(self.norm(grad).clamp_min(TINY_NORM), grad)

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """Scale each sample back onto the sphere when it lies outside; points inside are multiplied by exactly 1."""
        return delta * _per_sample((eps / self.norm(delta).clamp_min(TINY_NORM)).clamp(max=1.0), delta)
