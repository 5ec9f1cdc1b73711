"""linear.fit_logistic against optimality conditions checked directly, a plain torch.optim loop, and itself (batched
against one by one, weights against repeated rows)."""

from __future__ import annotations

import pytest
import torch

from auditnn.errors import AuditError
from auditnn.linear import fit_logistic, predict_logits, standardize


def _objective(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, l2: float) -> torch.Tensor:
    logits = x @ weight.T + bias
    return torch.nn.functional.cross_entropy(logits, y) + l2 / 2 * (weight**2).sum()


def _gradient(x, y, weight, bias, l2):  # noqa: ANN001, ANN202 - test helper
    """The smooth part's gradient by autograd (a second way from the solver's closed form)."""
    weight = weight.clone().requires_grad_(True)
    bias = bias.clone().requires_grad_(True)
    _objective(x, y, weight, bias, l2).backward()
    return weight.grad, bias.grad


def _blobs(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=generator, dtype=torch.float64)
    x = centres[y] + torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return x, y


def test_one_dimensional_separable_with_l2_meets_the_stationarity_condition() -> None:
    # x = -1 (class 0) and +1 (class 1): separable, so only l2 keeps the optimum finite. By symmetry the bias is 0 and
    # the two logit rows are opposite (w1 = -w0 = a); d/dw1 [mean CE + l2/2 (w0^2 + w1^2)] = 0 gives
    # -(1 - sigmoid(2a)) + l2 a = 0: checked on the result, a hand-derived condition.
    x = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    l2 = 0.1
    fit = fit_logistic(x, y, 2, l2=l2, max_iter=5000, tol=1e-12)
    assert bool(fit.converged)
    a = float(fit.weight[1, 0])
    assert float(fit.weight[0, 0]) == pytest.approx(-a, abs=1e-8)
    assert float(fit.bias[1] - fit.bias[0]) == pytest.approx(0.0, abs=1e-8)
    assert -(1 - torch.sigmoid(torch.tensor(2 * a, dtype=torch.float64))) + l2 * a == pytest.approx(0.0, abs=1e-8)
    assert a > 1.0  # far from the start at 0: the condition is not met trivially


def test_l2_fit_has_zero_gradient_by_autograd() -> None:
    x, y = _blobs(60, 4, 3, seed=0)
    fit = fit_logistic(x, y, 3, l2=0.05, max_iter=5000, tol=1e-12)
    grad_w, grad_b = _gradient(x, y, fit.weight, fit.bias, 0.05)
    assert float(grad_w.abs().max()) < 1e-7 and float(grad_b.abs().max()) < 1e-7


def test_l1_fit_meets_the_subgradient_optimality_condition() -> None:
    x, y = _blobs(80, 6, 3, seed=1)
    l1 = 0.05
    fit = fit_logistic(x, y, 3, l1=l1, l2=0.01, max_iter=20000, tol=1e-13)
    grad_w, grad_b = _gradient(x, y, fit.weight, fit.bias, 0.01)
    nonzero = fit.weight != 0
    assert 0 < int(nonzero.sum()) < fit.weight.numel()  # the penalty zeroes some weights and keeps others
    # KKT: grad + l1 sign(w) = 0 where w != 0; |grad| <= l1 where w = 0; the bias is unpenalized.
    assert float((grad_w + l1 * torch.sign(fit.weight))[nonzero].abs().max()) < 1e-6
    assert float(grad_w[~nonzero].abs().max()) <= l1 + 1e-6
    assert float(grad_b.abs().max()) < 1e-6


def test_matches_a_plain_torch_optim_loop() -> None:
    x, y = _blobs(40, 3, 3, seed=2)
    l2 = 0.02
    fit = fit_logistic(x, y, 3, l2=l2, max_iter=5000, tol=1e-12)
    weight = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _objective(x, y, weight, bias, l2)
        loss.backward()
        return loss

    optimizer.step(closure)
    # The bias is defined up to a constant shared by the classes (softmax), the weights are not (l2).
    assert torch.allclose(fit.weight, weight.detach(), atol=1e-6)
    assert torch.allclose(fit.bias - fit.bias.mean(), bias.detach() - bias.detach().mean(), atol=1e-6)
    assert float(_objective(x, y, fit.weight, fit.bias, l2)) <= float(closure().detach()) + 1e-12


def test_batched_equals_one_by_one() -> None:
    x, y = _blobs(30, 4, 3, seed=3)
    generator = torch.Generator().manual_seed(0)
    labels = torch.stack([y, y[torch.randperm(30, generator=generator)], y.flip(0)])
    features = torch.stack([x, x * 2, x + 1])
    fit = fit_logistic(features, labels, 3, l2=0.1, l1=0.01, max_iter=3000, tol=1e-12)
    for b in range(3):
        one = fit_logistic(features[b], labels[b], 3, l2=0.1, l1=0.01, max_iter=3000, tol=1e-12)
        assert torch.allclose(fit.weight[b], one.weight, atol=1e-8)
        assert torch.allclose(fit.bias[b], one.bias, atol=1e-8)
    assert bool(fit.converged.all())
    logits = predict_logits(fit, features)
    assert torch.allclose(logits[1], features[1] @ fit.weight[1].T + fit.bias[1])


def test_label_sets_sharing_features_equal_one_by_one() -> None:
    # R = 2 label sets x G = 3 feature matrices with per-group weights (a fold's test rows weigh 0), as the scan's
    # permutation null solves them; each problem against its own fit.
    x, y = _blobs(24, 3, 3, seed=5)
    features = torch.stack([x, x.flip(0), x * 0.5])
    generator = torch.Generator().manual_seed(1)
    labels = torch.stack([y.expand(3, 24), y[torch.randperm(24, generator=generator)].expand(3, 24)])
    weights = torch.ones(3, 24, dtype=torch.float64)
    weights[0, :8] = weights[1, 8:16] = weights[2, 16:] = 0
    fit = fit_logistic(features, labels, 3, l2=0.1, sample_weight=weights, max_iter=3000, tol=1e-12)
    assert fit.weight.shape == (2, 3, 3, 3) and fit.converged.shape == (2, 3)
    for r in range(2):
        for g in range(3):
            keep = weights[g] > 0
            one = fit_logistic(features[g][keep], labels[r, g][keep], 3, l2=0.1, max_iter=3000, tol=1e-12)
            assert torch.allclose(fit.weight[r, g], one.weight, atol=1e-8)
            assert torch.allclose(fit.bias[r, g], one.bias, atol=1e-8)
    assert torch.allclose(predict_logits(fit, features)[1, 2], features[2] @ fit.weight[1, 2].T + fit.bias[1, 2])


def test_sample_weights_equal_repeated_rows() -> None:
    x, y = _blobs(20, 3, 2, seed=4)
    counts = torch.arange(20) % 3 + 1
    weighted = fit_logistic(x, y, 2, l2=0.05, sample_weight=counts.double(), max_iter=5000, tol=1e-12)
    index = torch.repeat_interleave(torch.arange(20), counts)
    repeated = fit_logistic(x[index], y[index], 2, l2=0.05, max_iter=5000, tol=1e-12)
    assert torch.allclose(weighted.weight, repeated.weight, atol=1e-7)
    assert torch.allclose(weighted.bias, repeated.bias, atol=1e-7)


def test_standardize_uses_train_statistics_and_keeps_constant_columns_at_zero() -> None:
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    other = torch.tensor([[2.0, 7.0]])
    a, b = standardize(train, other)
    assert torch.equal(a, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))  # mean (2, 5), std (1, 0 -> 1)
    assert torch.equal(b, torch.tensor([[0.0, 2.0]]))


def test_bad_labels_are_refused() -> None:
    with pytest.raises(AuditError, match="labels fall outside"):
        fit_logistic(torch.zeros(3, 2), torch.tensor([0, 1, 2]), 2)


def test_an_eigen_solver_failure_falls_back_to_the_trace_bound_and_the_fit_still_converges(monkeypatch) -> None:
    """The CNN's penultimate features on the digits made float32 eigvalsh fail (exit 3 in `auditnn shortcut
    --mitigate dfr`); the bound falls back to the Gram matrix's trace, an upper bound of its largest eigenvalue."""
    from auditnn import linear

    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    reference = fit_logistic(x, y, 2, l2=0.1)

    def failing(_):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigvalsh", failing)
    weights = torch.full((1, 1, 40), 1 / 40)
    bound = linear.lipschitz_bound(x[None], weights, 0.1)
    x1 = torch.cat([x, torch.ones(40, 1)], 1)
    assert float(bound) == pytest.approx(0.5 * float((x1 * x1).sum() / 40) + 0.1, rel=1e-5)
    fallback = fit_logistic(x, y, 2, l2=0.1, max_iter=5000)
    torch.testing.assert_close(fallback.weight, reference.weight, atol=1e-3, rtol=1e-3)
