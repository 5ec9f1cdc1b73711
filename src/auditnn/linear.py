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
    """weight (..., K, D) and bias (..., K) of the fitted problems (leading dimensions: see fit_logistic),
    iterations: the proximal steps taken (the slowest problem's), converged: bool (...), True where
    the largest change of a parameter in the last step was below tol times (1 + its largest magnitude)."""

    weight: torch.Tensor
    bias: torch.Tensor
    iterations: int
    converged: torch.Tensor


def predict_logits(fit: LogisticFit, features: torch.Tensor) -> torch.Tensor:
    """Logits (..., N, K) of features (N, D) or (G, N, D) under a fit of leading dimensions (), (G,) or (R, G)."""
    weight = fit.weight if fit.weight.dim() > 2 else fit.weight.unsqueeze(0)
    bias = fit.bias if fit.bias.dim() > 1 else fit.bias.unsqueeze(0)
    x = features if features.dim() == 3 else features.unsqueeze(0)
    logits = torch.einsum("gnd,...gkd->...gnk", x, weight) + bias.unsqueeze(-2)
    return logits if fit.weight.dim() > 2 or features.dim() > 2 else logits[0]


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
        raise AuditError(f"features of shape {tuple(features.shape)}; allowed: a float tensor (N, D) or (G, N, D)")
    shared = features.shape[:-2]
    if (
        labels.dtype != torch.int64
        or labels.dim() not in (1, 2, 3)
        or labels.shape[-1] != features.shape[-2]
        or (labels.dim() > 1 and shared and labels.shape[-2] != shared[0])
        or (labels.dim() == 3 and not shared)
    ):
        raise AuditError(
            f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype} for features {tuple(features.shape)}; "
            "allowed: int64 (N,), (G, N) or (R, G, N)"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise AuditError(f"labels fall outside [0, {num_classes}); allowed: class indices 0 .. {num_classes - 1}")
    if not (l2 >= 0 and l1 >= 0):
        raise AuditError(f"penalties l2 = {l2}, l1 = {l1}; allowed: numbers >= 0")


def lipschitz_bound(features: torch.Tensor, sample_weight: torch.Tensor, l2: float) -> torch.Tensor:
    """L (R, G, 1, 1) of the smooth part's gradient for features (G, N, D) and weights (R, G, N) that sum to 1 per
    problem."""
    ones = torch.ones(*features.shape[:-1], 1, dtype=features.dtype, device=features.device)
    x1 = torch.cat([features, ones], dim=-1)
    gram = torch.einsum("gnd,rgn,gne->rgde", x1, sample_weight, x1)
    try:  # in float64: features with near-repeated columns (ReLU units that never fire) break float32's solver
        largest = torch.linalg.eigvalsh(gram.double())[..., -1].clamp_min(0).to(gram.dtype)
    except torch.linalg.LinAlgError:  # the trace of a PSD matrix bounds its largest eigenvalue: smaller steps, same fit
        largest = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (0.5 * largest + l2)[..., None, None]


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
    (module docstring). Problems come in a batch of up to two leading dimensions: features (N, D) or (G, N, D)
    float; labels (N,), (G, N) or (R, G, N) int64, where R sets of labels share the G feature matrices (a label
    permutation null: R permutations x G folds, the features stored once); sample_weight >= 0, default 1,
    broadcast like the labels. The fit's leading dimensions are those of the broadcast labels and features:
    (K, D) for one problem, (G, K, D), (R, G, K, D). The iteration stops when every problem has converged or after
    max_iter steps; the result reports which converged. Without a penalty separable data has no optimum (the
    weights grow without bound): give l2 > 0 for a finite one."""
    _check(features, labels, num_classes, l2, l1)
    lead = torch.broadcast_shapes(features.shape[:-2], labels.shape[:-1])
    x = features if features.dim() == 3 else features.unsqueeze(0)  # (G, N, D)
    groups, n, dim = x.shape
    y = labels.view(-1, *labels.shape[-2:]) if labels.dim() > 1 else labels.view(1, 1, n)
    y = y.expand(y.shape[0], groups, n)  # (R, G, N)
    if sample_weight is None:
        w = torch.ones(1, groups, n, dtype=x.dtype, device=x.device)
    else:
        given = sample_weight.to(x.dtype)
        w = given.view(-1, *given.shape[-2:]) if given.dim() > 1 else given.view(1, 1, n)
        w = w.expand(w.shape[0], groups, n)
    if bool((w < 0).any()) or bool((w.sum(dim=-1) <= 0).any()):
        raise AuditError("sample weights include a negative value or sum to 0; allowed: weights >= 0, some > 0")
    w = w / w.sum(dim=-1, keepdim=True)
    repeats = max(y.shape[0], w.shape[0])
    y = y.expand(repeats, groups, n)
    step = 1.0 / lipschitz_bound(x, w, l2)  # (R or 1, G, 1, 1)

    def gradient(
        weight: torch.Tensor, bias: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.einsum("gnd,rgkd->rgnk", x, weight) + bias.unsqueeze(-2)
        residual = torch.softmax(logits, dim=-1).mul_(w.unsqueeze(-1))  # (R, G, N, K): w_i (p_i - onehot(y_i))
        residual.scatter_add_(-1, y.unsqueeze(-1), -w.expand(y.shape).unsqueeze(-1))
        return torch.einsum("rgnk,gnd->rgkd", residual, x) + l2 * weight, residual.sum(dim=-2)

    shape = (repeats, groups, num_classes, dim)
    final_w = torch.zeros(shape, dtype=x.dtype, device=x.device)
    final_b = torch.zeros(shape[:-1], dtype=x.dtype, device=x.device)
    final_converged = torch.zeros(repeats, groups, dtype=torch.bool, device=x.device)
    # The label sets still iterating (a set leaves when all its G problems have converged): finished problems
    # cost nothing more, which is what makes a permutation null cheap (most null fits converge early).
    active = torch.arange(repeats, device=x.device)
    weight, bias = final_w.clone(), final_b.clone()
    ahead_w, ahead_b = weight, bias  # the extrapolated point the gradient is taken at
    momentum = torch.ones(repeats, groups, 1, 1, dtype=x.dtype, device=x.device)
    iterations = 0
    while iterations < max_iter and len(active):
        iterations += 1
        y_a = y[active]
        w_a = w if w.shape[0] == 1 else w[active]
        step_a = step if step.shape[0] == 1 else step[active]
        grad_w, grad_b = gradient(ahead_w, ahead_b, y_a, w_a)
        new_w = ahead_w - step_a * grad_w
        if l1 > 0:
            new_w = torch.sign(new_w) * (new_w.abs() - step_a * l1).clamp_min(0)
        new_b = ahead_b - step_a[..., 0] * grad_b
        change = torch.maximum((new_w - weight).abs().amax((-2, -1)), (new_b - bias).abs().amax(-1))
        size = torch.maximum(new_w.abs().amax((-2, -1)), new_b.abs().amax(-1))
        converged = change <= tol * (1 + size)
        # Restart where the step went against the momentum (the objective is then likely to rise).
        uphill = ((ahead_w - new_w) * (new_w - weight)).sum((-2, -1)) + ((ahead_b - new_b) * (new_b - bias)).sum(-1)
        restart = (uphill > 0)[..., None, None]
        next_momentum = torch.where(restart, torch.ones_like(momentum), (1 + (1 + 4 * momentum**2).sqrt()) / 2)
        beta = torch.where(restart, torch.zeros_like(momentum), (momentum - 1) / next_momentum)
        ahead_w = new_w + beta * (new_w - weight)
        ahead_b = new_b + beta[..., 0] * (new_b - bias)
        weight, bias, momentum = new_w, new_b, next_momentum
        final_w[active], final_b[active], final_converged[active] = weight, bias, converged
        going = ~converged.all(dim=1)
        if not bool(going.all()):
            active = active[going]
            weight, bias, momentum = weight[going], bias[going], momentum[going]
            ahead_w, ahead_b = ahead_w[going], ahead_b[going]
    weight, bias, converged = final_w, final_b, final_converged
    return LogisticFit(
        weight.reshape(*lead, num_classes, dim),
        bias.reshape(*lead, num_classes),
        iterations,
        converged.reshape(lead),
    )
