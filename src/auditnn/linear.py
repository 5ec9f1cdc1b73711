"""Multinomial logistic regression in torch, batched over independent problems of one size, deterministic.

One solver for every penalty: FISTA (accelerated proximal gradient, Beck and Teboulle 2009) with a constant step
1 / L from a Lipschitz bound of the smooth part's gradient, and an adaptive restart (O'Donoghue and Candes 2015) when
the momentum turns uphill. The smooth part is the weighted mean cross-entropy plus l2 / 2 * ||W||^2; the l1 part
l1 * ||W||_1 is handled by its proximal map (soft threshold). The bias is never penalized. Because the step is fixed by
a bound, not searched for, every problem of a batch runs the same tensor program: permutations x folds x regions are
solved at once, on the features' device.

Lipschitz bound: the softmax cross-entropy's Hessian in the logits is diag(p) - p p^T, whose largest eigenvalue is at
most 1/2; so the smooth part's gradient is L-Lipschitz with L = 1/2 * lambda_max(X1^T diag(w) X1) / sum(w) + l2,
X1 being the features with a column of ones (the bias)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import AuditError

MAX_ITER = 500
TOL = 1e-5


@dataclass
class LogisticFit:
    """weight (B, K, D) and bias (B, K) of B fitted problems (no leading B when one problem was given: (K, D), (K,)),
    iterations: the proximal steps taken (the slowest problem's), converged: bool (B,) (or a 0-d tensor), True where
    the largest change of a parameter in the last step was below tol times (1 + its largest magnitude)."""

    weight: torch.Tensor
    bias: torch.Tensor
    iterations: int
    converged: torch.Tensor


def predict_logits(fit: LogisticFit, features: torch.Tensor) -> torch.Tensor:
    """Logits (B?, N, K) of features (B?, N, D) under a fit with the same leading B (or none)."""
    return features @ fit.weight.transpose(-1, -2) + fit.bias.unsqueeze(-2)


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(train, *others) centred and scaled by the mean and standard deviation (population) of train's rows, over its
    second-to-last dimension (N of (B?, N, D)); a column constant on train is centred and left unscaled by dividing by
    1 instead, so it stays exactly 0 on train."""
    mean = train.mean(dim=-2, keepdim=True)
    std = train.std(dim=-2, keepdim=True, unbiased=False)
    scale = torch.where(std > 0, std, torch.ones_like(std))
    return tuple((x - mean) / scale for x in (train, *others))


def _check(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float, l1: float) -> None:
    if features.dim() not in (2, 3) or not features.is_floating_point():
        raise AuditError(f"features of shape {tuple(features.shape)}; allowed: a float tensor (N, D) or (B, N, D)")
    if labels.dtype != torch.int64 or labels.shape[-1] != features.shape[-2] or labels.dim() > features.dim() - 1:
        raise AuditError(
            f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype} for features {tuple(features.shape)}; "
            "allowed: int64 (N,) or (B, N)"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise AuditError(f"labels fall outside [0, {num_classes}); allowed: class indices 0 .. {num_classes - 1}")
    if not (l2 >= 0 and l1 >= 0):
        raise AuditError(f"penalties l2 = {l2}, l1 = {l1}; allowed: numbers >= 0")


def lipschitz_bound(features: torch.Tensor, sample_weight: torch.Tensor, l2: float) -> torch.Tensor:
    """L (B, 1, 1) of the smooth part's gradient for features (B, N, D) and weights (B, N) that sum to 1 per problem."""
    ones = torch.ones(*features.shape[:-1], 1, dtype=features.dtype, device=features.device)
    x1 = torch.cat([features, ones], dim=-1)
    gram = (x1 * sample_weight.unsqueeze(-1)).transpose(-1, -2) @ x1
    largest = torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0)
    return (0.5 * largest + l2).view(-1, 1, 1)


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    l2: float = 0.0,
    l1: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> LogisticFit:
    """Minimize, per problem, sum_i w_i CE(W x_i + b, y_i) / sum_i w_i + l2 / 2 ||W||^2 + l1 ||W||_1 by FISTA
    (module docstring). features (N, D) or (B, N, D) float; labels (N,) (shared by all problems) or (B, N) int64;
    sample_weight (N,) or (B, N) >= 0, default 1. The iteration stops when every problem has converged or after
    max_iter steps; the result reports which converged. Without a penalty separable data has no optimum (the weights
    grow without bound): give l2 > 0 for a finite one."""
    _check(features, labels, num_classes, l2, l1)
    single = features.dim() == 2
    x = features.unsqueeze(0) if single else features
    batch, n, dim = x.shape
    y = labels.expand(batch, n) if labels.dim() == 1 else labels
    if sample_weight is None:
        w = torch.ones(batch, n, dtype=x.dtype, device=x.device)
    else:
        w = sample_weight.to(x.dtype).expand(batch, n)
    if bool((w < 0).any()) or bool((w.sum(dim=1) <= 0).any()):
        raise AuditError("sample weights include a negative value or sum to 0; allowed: weights >= 0, some > 0")
    w = w / w.sum(dim=1, keepdim=True)
    onehot = torch.nn.functional.one_hot(y, num_classes).to(x.dtype)
    step = 1.0 / lipschitz_bound(x, w, l2)  # (B, 1, 1)

    def gradient(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = x @ weight.transpose(1, 2) + bias.unsqueeze(1)
        residual = (torch.softmax(logits, dim=-1) - onehot) * w.unsqueeze(-1)  # (B, N, K)
        return residual.transpose(1, 2) @ x + l2 * weight, residual.sum(dim=1)

    weight = torch.zeros(batch, num_classes, dim, dtype=x.dtype, device=x.device)
    bias = torch.zeros(batch, num_classes, dtype=x.dtype, device=x.device)
    ahead_w, ahead_b = weight, bias  # the extrapolated point the gradient is taken at
    momentum = torch.ones(batch, 1, 1, dtype=x.dtype, device=x.device)
    converged = torch.zeros(batch, dtype=torch.bool, device=x.device)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        grad_w, grad_b = gradient(ahead_w, ahead_b)
        new_w = ahead_w - step * grad_w
        if l1 > 0:
            new_w = torch.sign(new_w) * (new_w.abs() - step * l1).clamp_min(0)
        new_b = ahead_b - step[:, :, 0] * grad_b
        change = torch.maximum((new_w - weight).flatten(1).abs().amax(1), (new_b - bias).abs().amax(1))
        size = torch.maximum(new_w.flatten(1).abs().amax(1), new_b.abs().amax(1))
        converged = change <= tol * (1 + size)
        # Restart where the step went against the momentum (the objective is then likely to rise).
        uphill = ((ahead_w - new_w) * (new_w - weight)).flatten(1).sum(1) + ((ahead_b - new_b) * (new_b - bias)).sum(1)
        restart = (uphill > 0).view(-1, 1, 1)
        next_momentum = torch.where(restart, torch.ones_like(momentum), (1 + (1 + 4 * momentum**2).sqrt()) / 2)
        beta = torch.where(restart, torch.zeros_like(momentum), (momentum - 1) / next_momentum)
        ahead_w = new_w + beta * (new_w - weight)
        ahead_b = new_b + beta[:, :, 0] * (new_b - bias)
        weight, bias, momentum = new_w, new_b, next_momentum
        if bool(converged.all()):
            break
    if single:
        return LogisticFit(weight[0], bias[0], iterations, converged[0])
    return LogisticFit(weight, bias, iterations, converged)
