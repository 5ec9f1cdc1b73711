"""Square (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box adversarial attack via random
search"): a random search that uses forward passes only, the score-based member of the AutoAttack ensemble.

Each iteration changes one random square window of every point still standing and keeps the change if it lowers the
point's loss (untargeted: the margin z_y - max_{j != y} z_j; targeted: the cross-entropy to the target) or breaks it.
Linf (the paper's Algorithm 1): vertical stripes of +-eps to start; each window is set to x +- eps, one sign per
channel. L2 (Algorithm 3): a grid of centered "meta-pattern" squares to start; each update adds the pattern to one
window and moves the norm of a second window into it. The window side follows the fraction p of pixels changed,
p_init halved at the reference's iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10000, rescaled to
the query budget. No gradient is taken, so the attack is the check that gradient masking cannot fool.

Where it follows the paper rather than the reference code (github.com/max-andr/square-attack, and AutoAttack's copy):
windows (and the L2 pattern's transposition) are drawn per point (AutoAttack's copy draws one for the whole batch) and
uniformly over every position inside the image, {0, ..., H - side} (both references draw from {0, ..., H - side - 1}, so
their windows never reach the last row or column); the Linf side is capped at the image (the reference's one pixel short
of it). With the reference: Linf signs that would leave the window unchanged are redrawn (its `while` loop, here one
exact draw); a change is kept when it lowers the loss or breaks the point (AutoAttack's rule); `queries` counts every
forward pass of a point, the starting image's included (the reference's n_iters); a point is broken when the model's
argmax leaves its label (reaches its target), as the base class scores it (the reference stops at a margin <= 0, a tie
too); the L2 start's grid is centered in the image for every size (the reference's runs off the bottom and right edges
below 10 pixels, and for some sizes between 10 and 15)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import AuditError
from .base import Attack, Perturbed, is_adversarial, register_attack
from .norms import TINY_NORM

# The reference's breakpoints, on its scale of 10000 iterations: p is halved after each one.
P_BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
REFERENCE_ITERATIONS = 10000
# Linf: a window whose new signs would leave the image as it is is redrawn (the reference's `while` loop), at most
# this many times; each round keeps the old window with chance 2^-C at most, so 20 rounds waste a query 1 in 10^6.
REDRAWS = 20


def p_schedule(p_init: float, iteration: int, queries: int) -> float:
    """The fraction of pixels a window covers at `iteration` (0-based) of a run of `queries` queries: the reference's
    piecewise-constant schedule, its iteration rescaled to 10000 as int(iteration / queries * 10000)."""
    scaled = int(iteration / queries * REFERENCE_ITERATIONS)
    return p_init / 2 ** sum(scaled > b for b in P_BREAKPOINTS)


def square_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """The loss the search lowers, per sample (the reference's): untargeted, the margin z_y - max_{j != y} z_j
    (below 0 once the point is misclassified); targeted, the cross-entropy to the target."""
    if targets is not None:
        return F.cross_entropy(logits, targets, reduction="none")
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), -float("inf")).amax(1)
    return own - others


def _rectangle_pattern(rows: int, cols: int) -> torch.Tensor:
    """The reference's pseudo-Gaussian bump on a rows x cols rectangle (nested rectangles around its center, the
    k-th weighted 1 / (k + 1)^2), unit L2 norm (all zeros when the rectangle is empty)."""
    pattern = torch.zeros(rows, cols, dtype=torch.float64)
    top, left = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        pattern[max(top, 0) : min(top + 2 * k + 1, rows), max(left, 0) : min(left + 2 * k + 1, cols)] += (
            1.0 / (k + 1) ** 2
        )
        top, left = top - 1, left - 1
    return pattern / pattern.norm().clamp_min(TINY_NORM)


def meta_pattern(side: int) -> torch.Tensor:
    """The L2 update's s x s "meta-pattern" (the reference's eta): a bump on the top half and minus a bump on the
    bottom half, unit L2 norm, float64. The search transposes it at random."""
    pattern = torch.cat([_rectangle_pattern(side // 2, side), -_rectangle_pattern(side - side // 2, side)])
    return pattern / pattern.norm().clamp_min(TINY_NORM)


class Windows:
    """Random square windows of an H x W image: per side, tables of the rows (and columns) each top-left position
    covers, so that a batch of windows costs two lookups. Positions are uniform over every window inside the image
    (the paper's {0, ..., H - side}; the reference draws from {0, ..., H - side - 1}, so its windows never reach the
    last row or column)."""

    def __init__(self, height: int, width: int, device: torch.device) -> None:
        self.height, self.width, self.device = height, width, device
        self._tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._patterns: dict[int, torch.Tensor] = {}

    def patterns(self, side: int) -> torch.Tensor:
        """(2, side, side) float32: the meta-pattern and its transpose, on the device."""
        if side not in self._patterns:
            pattern = meta_pattern(side)
            self._patterns[side] = torch.stack([pattern, pattern.T]).float().to(self.device)
        return self._patterns[side]

    def tables(self, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(H - side + 1, H) and (W - side + 1, W) bool: row r of the first holds the rows a window at row r
        covers."""
        if side not in self._tables:
            self._tables[side] = (self._spans(side, self.height), self._spans(side, self.width))
        return self._tables[side]

    def _spans(self, side: int, length: int) -> torch.Tensor:
        first = torch.arange(length - side + 1, device=self.device).view(-1, 1)
        cells = torch.arange(length, device=self.device).view(1, -1)
        return (cells >= first) & (cells < first + side)

    def corners(self, n: int, side: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-left corners of n windows, uniform over every position inside the image."""
        rows = torch.randint(0, self.height - side + 1, (n,), generator=generator).to(self.device)
        cols = torch.randint(0, self.width - side + 1, (n,), generator=generator).to(self.device)
        return rows, cols

    def mask(self, rows: torch.Tensor, cols: torch.Tensor, side: int) -> torch.Tensor:
        """(n, 1, H, W) bool: each point's side x side window at (rows[i], cols[i])."""
        row_table, col_table = self.tables(side)
        return row_table[rows][:, None, :, None] & col_table[cols][:, None, None, :]


def _window_index(rows: torch.Tensor, cols: torch.Tensor, side: int, channels: int) -> tuple[torch.Tensor, ...]:
    """Advanced indices that read or write each point's side x side window of an (n, C, H, W) tensor as
    (n, C, side, side)."""
    n, device = len(rows), rows.device
    span = torch.arange(side, device=device)
    return (
        torch.arange(n, device=device).view(n, 1, 1, 1),
        torch.arange(channels, device=device).view(1, channels, 1, 1),
        (rows.view(-1, 1) + span).view(n, 1, side, 1),
        (cols.view(-1, 1) + span).view(n, 1, 1, side),
    )


def _norm(delta: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """The L2 norm of delta over `dims`, kept as size-1 dimensions."""
    return torch.linalg.vector_norm(delta, dim=dims, keepdim=True)


@register_attack
@dataclass
class Square(Attack):
    """queries: model evaluations per point and restart (>= 1), the first one on the starting image; a point stops
    using them as soon as it is broken. restarts: independent runs, each on the points no earlier run broke.
    p_init: the fraction of pixels the first windows cover (0 < p_init <= 1; the paper's 0.8 for Linf and L2)."""

    name: ClassVar[str] = "square"
    description: ClassVar[str] = "searches random squares with forward passes only"
    uses_gradients: ClassVar[bool] = False
    queries: int = 5000
    restarts: int = 1
    p_init: float = 0.8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.p_init <= 1:
            raise AuditError(f"p_init {self.p_init:g}; allowed: 0 < p_init <= 1")

    @property
    def run_label(self) -> str:
        return "square"

    @property
    def restart_count(self) -> int:
        return self.restarts

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
        best_loss = torch.full((n,), float("inf"), device=x.device)
        broken = torch.zeros(n, dtype=torch.bool, device=x.device)
        evaluations = 0
        for _ in range(self.restarts):
            idx = torch.nonzero(~broken).view(-1)  # each restart attacks only the points every earlier one left
            if not len(idx):
                break
            t = None if targets is None else targets[idx]
            adv, loss, hit, used = self._search(model, x[idx], y[idx], t, generator)
            evaluations += used
            better = hit | (loss < best_loss[idx])
            best[idx] = torch.where(better.view(-1, 1, 1, 1), adv, best[idx])
            best_loss[idx] = torch.where(better, loss, best_loss[idx])
            broken[idx] = hit
        # No gradient is taken, so none can be unusable.
        return Perturbed(best, broken, torch.zeros(n, dtype=torch.bool, device=x.device), evaluations)

    def _search(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """One run of the random search. Returns, per point, the kept image, its loss, whether it is adversarial,
        and the forward passes over single images spent. A point leaves the search as soon as it is broken."""
        windows = Windows(x.shape[2], x.shape[3], x.device)
        if self.norm == "linf":  # Linf changes pixels only to x - eps or x + eps (in the box): keep both at hand
            ends = torch.stack([(x - self.eps).clamp(0.0, 1.0), (x + self.eps).clamp(0.0, 1.0)])
            best = self._linf_start(ends, generator)
        else:
            ends = x.unsqueeze(0)
            best = self._l2_start(x, generator)
        with torch.no_grad():
            logits = model(best).float()
        loss, hit = square_loss(logits, y, targets), is_adversarial(logits, y, targets)
        evaluations = len(x)
        # The points still searched, compacted: positions in x, per-point ends (or x), kept images, losses, labels.
        idx = torch.nonzero(~hit).view(-1)
        ea, ba, la, ya = ends[:, idx], best[idx], loss[idx], y[idx]
        ta = None if targets is None else targets[idx]
        for iteration in range(self.queries - 1):
            if not len(idx):
                break
            p = p_schedule(self.p_init, iteration, self.queries)
            if self.norm == "linf":
                candidate = self._linf_step(ea, ba, p, windows, generator)
            else:
                candidate = self._l2_step(ea[0], ba, p, windows, generator)
            with torch.no_grad():
                logits = model(candidate).float()
            evaluations += len(idx)
            new_loss, new_hit = square_loss(logits, ya, ta), is_adversarial(logits, ya, ta)
            # Keep a change that lowers the loss, or breaks the point (the reference keeps both).
            better = new_hit | (new_loss < la)
            ba = torch.where(better.view(-1, 1, 1, 1), candidate, ba)
            la = torch.where(better, new_loss, la)
            if new_hit.any():  # broken points hand back their image and leave
                out = idx[new_hit]
                best[out], loss[out], hit[out] = ba[new_hit], la[new_hit], True
                keep = ~new_hit
                idx, ea, ba, la, ya = idx[keep], ea[:, keep], ba[keep], la[keep], ya[keep]
                ta = None if ta is None else ta[keep]
        best[idx], loss[idx] = ba, la
        return best, loss, hit, evaluations

    # ------------------------------------------------------------------------------------------------ Linf

    @staticmethod
    def _linf_start(ends: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Vertical stripes: each column of each channel at x - eps or x + eps (the paper's Linf initialization).
        ends: (2, n, C, H, W), x - eps and x + eps in the box."""
        _, n, c, _, w = ends.shape
        up = torch.randint(0, 2, (n, c, 1, w), generator=generator).bool().to(ends.device)
        return torch.where(up, ends[1], ends[0])

    @staticmethod
    def _linf_step(
        ends: torch.Tensor, best: torch.Tensor, p: float, windows: Windows, generator: torch.Generator
    ) -> torch.Tensor:
        """Algorithm 1's proposal: one random window per point, of side round(sqrt(p * H * W)), set to x +- eps
        with one sign per channel. Signs that would leave the window as it is are redrawn, as the reference does,
        in one draw: only one sign pattern can leave it as it is, and XOR with a random nonzero pattern turns it
        into a uniform draw from the others."""
        _, n, c, h, w = ends.shape
        side = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
        mask = windows.mask(*windows.corners(n, side, generator), side)
        up = torch.randint(0, 2, (n, c, 1, 1), generator=generator).bool().to(best.device)
        candidate = torch.where(mask, torch.where(up, ends[1], ends[0]), best)
        stuck = (candidate == best).flatten(1).all(1).view(-1, 1, 1, 1)
        up = up ^ (stuck & _nonzero_pattern(n, c, generator).to(best.device))
        return torch.where(mask, torch.where(up, ends[1], ends[0]), best)

    # ------------------------------------------------------------------------------------------------ L2

    def _l2_place(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """x + delta scaled to L2 norm eps, in the box (the reference rescales every proposal to the sphere)."""
        return (x + delta * (self.eps / _norm(delta, (1, 2, 3)).clamp_min(TINY_NORM))).clamp(0.0, 1.0)

    def _l2_start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Algorithm 3's start: a centered grid of squares of side min(H, W) // 5 (at least 1), each the meta-pattern
        (transposed at random, drawn per square as the reference does) times a random sign per point and channel,
        the whole scaled to norm eps."""
        n, c, h, w = x.shape
        side = max(min(h, w) // 5, 1)
        down, across = h // side, w // side
        top, left = (h - down * side) // 2, (w - across * side) // 2
        delta = torch.zeros_like(x)
        pattern = meta_pattern(side).to(x)
        for i in range(down):
            for j in range(across):
                flip = bool(torch.rand(1, generator=generator) > 0.5)
                bump = (pattern.T if flip else pattern) * _signs((n, c, 1, 1), generator).to(x.device)
                r, k = top + i * side, left + j * side
                delta[:, :, r : r + side, k : k + side] += bump
        return self._l2_place(x, delta)

    def _l2_step(
        self, x: torch.Tensor, best: torch.Tensor, p: float, windows: Windows, generator: torch.Generator
    ) -> torch.Tensor:
        """Algorithm 3's proposal, per point: a window (odd side >= 3 from p) gets its current content, normalized,
        plus the meta-pattern with a random sign per channel, rescaled per channel to the norm of the budget left
        (shared among the channels) and of its content and a second random window's, which is set to 0; the whole
        perturbation is then scaled to norm eps."""
        n, c, h, w = x.shape
        side = max(int(round(math.sqrt(p * h * w))), 3)
        side = min(side + 1 if side % 2 == 0 else side, h, w)
        delta = best - x
        rows, cols = windows.corners(n, side, generator)
        rows2, cols2 = windows.corners(n, side, generator)
        second = windows.mask(rows2, cols2, side)
        union = windows.mask(rows, cols, side) | second
        union_norm = _norm(delta * union, (2, 3))  # (n, C, 1, 1)
        left = (self.eps**2 - _norm(delta, (1, 2, 3)).pow(2)).clamp_min(0.0)  # (n, 1, 1, 1)
        index = _window_index(rows, cols, side, c)
        window = delta[index]  # (n, C, s, s)
        window = window / _norm(window, (2, 3)).clamp_min(TINY_NORM)
        flip = torch.randint(0, 2, (n,), generator=generator).to(x.device)
        bump = windows.patterns(side)[flip].unsqueeze(1) * _signs((n, c, 1, 1), generator).to(x.device)
        update = bump + window
        update = update / _norm(update, (2, 3)).clamp_min(TINY_NORM)
        update = update * (left / c + union_norm.pow(2)).sqrt()
        delta = delta.masked_fill(second, 0.0)
        delta[index] = update
        return self._l2_place(x, delta)


def _signs(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform random +-1.0 of `shape`, drawn on the CPU."""
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1


EXACT_PATTERN_CHANNELS = 20  # up to this many channels a nonzero pattern is drawn exactly uniformly


def _nonzero_pattern(n: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """(n, C, 1, 1) bool, each sample a pattern drawn uniformly from the 2^C - 1 that are not all False (past
    EXACT_PATTERN_CHANNELS channels, uniformly from all 2^C: the all-False one, chance 2^-C, wastes one query)."""
    if channels > EXACT_PATTERN_CHANNELS:
        return torch.randint(0, 2, (n, channels, 1, 1), generator=generator).bool()
    code = torch.randint(1, 2**channels, (n, 1), generator=generator)
    return ((code >> torch.arange(channels)) & 1).bool().view(n, channels, 1, 1)
