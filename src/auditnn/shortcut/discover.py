"""Slices where a model fails, without group labels: an error-aware Gaussian mixture over the model's embeddings, as
in Domino (Eyuboglu et al. 2022), fitted in torch; slices ranked by their accuracy gap and described by size,
classes, exemplars, the scan features and the input regions that set them apart from the rest of their classes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import AuditError

PCA_DIMS = 32  # embedding dimensions the mixture sees (fewer when the embedding or the images have fewer)
INITS = 4  # EM runs from different starts; the best likelihood is kept
MAX_ITER = 200
TOL = 1e-6  # stop when the mean log-likelihood per image improves by less
VARIANCE_FLOOR = 1e-3  # per dimension, on standardized components: no component collapses onto one image
# The weights (gammas) of the terms of an image's log-likelihood under a component. Domino weighs its label and
# prediction terms by y_log_likelihood_weight and y_hat_log_likelihood_weight (both 1 by default) and the embedding
# Gaussian by 1. Here the embedding's Gaussian log-density is averaged over its dimensions (weight 1/d): summed, 32
# dimensions outvote the one correctness observation and the slices follow the classes, splitting a failure that
# spans classes (a shortcut) into pieces of one or two images (measured on the planted digits, README). A label
# weight above 0 does the same (recall of the watermark's conflicting images 0.13 at weight 1), so it is 0 by
# default: the label enters through the correctness term and the class-relative atypicality (reduce).
LABEL_WEIGHT = 0.0
ERROR_WEIGHT = 3.0
# The atypicality (one column beside the reduced embedding) counts as this many embedding dimensions, and the
# per-class covariance it whitens with is shrunk by SHRINKAGE towards a sphere (32 dimensions from 30 images of a
# class: unshrunk, the covariance is singular). Measured on the planted digits at rho 0.95 (README): diagonal and
# weight 1 gave top-slice recall 0.93 / 0.47 / 0.53 (background / watermark / boat), these 1.00 / 0.47 / 0.60.
ATYPICALITY_WEIGHT = 4.0
SHRINKAGE = 0.1
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
EPS = 1e-9


def reduce_embeddings(features: torch.Tensor, dims: int = PCA_DIMS) -> torch.Tensor:
    """(N, d) float64: the features (N, D) projected on their first d = min(dims, D, N - 1) principal components
    (centred, SVD), each scaled to unit variance; components with no variance are dropped."""
    x = features.double()
    x = x - x.mean(0, keepdim=True)
    d = max(1, min(dims, x.shape[1], x.shape[0] - 1))
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    scores = u[:, :d] * s[:d]
    std = scores.std(0)
    keep = std > 1e-8 * max(float(std.max()), 1e-30)
    return scores[:, keep] / std[keep]


@dataclass
class Mixture:
    """A fitted error-aware mixture with k components. weights (k,); means, variances (k, d) of the reduced
    embedding (diagonal covariance); label_probs (k, K): P(label | component); correct_probs (k,): P(correct |
    component); log_likelihood: the weighted log-likelihood per image at the end; iterations of EM."""

    weights: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor
    label_probs: torch.Tensor
    correct_probs: torch.Tensor
    log_likelihood: float
    iterations: int


def _m_step(
    z: torch.Tensor, onehot: torch.Tensor, correct: torch.Tensor, resp: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Weights, means, variances, label and correctness probabilities maximizing the expected log-likelihood."""
    nk = resp.sum(0) + 10 * EPS  # (k,)
    means = resp.T @ z / nk[:, None]
    variances = (resp.T @ (z * z)) / nk[:, None] - means**2 + VARIANCE_FLOOR
    labels = (resp.T @ onehot + EPS) / (nk[:, None] + EPS * onehot.shape[1])
    right = ((resp.T @ correct) / nk).clamp(EPS, 1 - EPS)
    return nk / nk.sum(), means, variances.clamp(min=VARIANCE_FLOOR), labels, right


def component_log_likelihood(
    z: torch.Tensor,
    onehot: torch.Tensor,
    correct: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    label_weight: float,
    error_weight: float,
    embedding_weight: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """(N, k): log w_s + sum_j e_j log N(z_j; mean_sj, var_sj) + label_weight log P(y | s) + error_weight (c log
    P(correct | s) + (1 - c) log P(wrong | s)), with c in [0, 1] the (soft) correctness and e the embedding weight,
    one number or one per dimension (d,)."""
    weights, means, variances, labels, right = params
    per_dim = torch.as_tensor(embedding_weight, dtype=torch.float64).expand(z.shape[1])
    gauss = -0.5 * (
        ((z[:, None, :] - means[None]) ** 2 / variances[None] + torch.log(variances)[None] + math.log(2 * math.pi))
        * per_dim
    ).sum(2)
    label = onehot @ torch.log(labels).T
    error = correct[:, None] * torch.log(right)[None] + (1 - correct[:, None]) * torch.log1p(-right)[None]
    return torch.log(weights)[None] + gauss + label_weight * label + error_weight * error


def _start(
    z: torch.Tensor, onehot: torch.Tensor, correct: torch.Tensor, k: int, run: int, generator: torch.Generator
) -> torch.Tensor:
    """Initial responsibilities (N, k). Run 0: the error-aware start, images grouped by (label, correct or wrong)
    cells (Domino's confusion start), cells beyond k merged by label; later runs: hard assignment to k images drawn
    at random (seeded), by distance in the reduced embedding. Both with a little noise so no component is empty."""
    n = len(z)
    if run == 0:
        cell = onehot.argmax(1) * 2 + (correct > 0.5).long()
        _, cell = torch.unique(cell, return_inverse=True)
        cell = cell % k
    else:
        centres = z[torch.randperm(n, generator=generator)[:k]]
        cell = torch.cdist(z, centres).argmin(1)
    resp = torch.nn.functional.one_hot(cell, k).double()
    resp = resp + 1e-3 * torch.rand(n, k, generator=generator, dtype=torch.float64)
    return resp / resp.sum(1, keepdim=True)


def fit_mixture(
    z: torch.Tensor,
    labels: torch.Tensor,
    correct: torch.Tensor,
    num_classes: int,
    k: int,
    *,
    label_weight: float = LABEL_WEIGHT,
    error_weight: float = ERROR_WEIGHT,
    embedding_weight: float | torch.Tensor = 1.0,
    seed: int = 0,
    inits: int = INITS,
    max_iter: int = MAX_ITER,
) -> tuple[Mixture, torch.Tensor]:
    """(mixture, responsibilities (N, k)) fitted by EM from `inits` starts (_start), keeping the best weighted
    log-likelihood. z: reduced embeddings (N, d); labels (N,) int64; correct (N,) in [0, 1]; embedding_weight: one
    number or one per dimension (d,) (component_log_likelihood); the M-step does not depend on it."""
    if k < 2:
        raise AuditError(f"slices {k}; allowed: at least 2")
    z = z.double()
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).double()
    c = correct.double()
    generator = torch.Generator().manual_seed(seed)
    best: tuple[Mixture, torch.Tensor] | None = None
    for run in range(inits):
        resp = _start(z, onehot, c, k, run, generator)
        previous, iterations, mean_ll = -math.inf, 0, -math.inf
        for step in range(1, max_iter + 1):
            iterations = step
            params = _m_step(z, onehot, c, resp)
            joint = component_log_likelihood(z, onehot, c, params, label_weight, error_weight, embedding_weight)
            norm = torch.logsumexp(joint, 1, keepdim=True)
            resp = torch.exp(joint - norm)
            mean_ll = float(norm.mean())
            if mean_ll - previous < TOL:
                break
            previous = mean_ll
        if best is None or mean_ll > best[0].log_likelihood:
            weights, means, variances, label_probs, right = params
            best = (Mixture(weights, means, variances, label_probs, right, mean_ll, iterations), resp)
    assert best is not None
    return best


def atypicality(z: torch.Tensor, labels: torch.Tensor, shrinkage: float = SHRINKAGE) -> torch.Tensor:
    """(N,) float64, standardized: the log of each image's squared Mahalanobis distance to its class's mean in the
    reduced embedding, under the class's own covariance S shrunk towards a sphere, (1 - shrinkage) S + shrinkage
    mean(diag S) I (plus VARIANCE_FLOOR I). How unlike its own class an image looks once the class's correlated
    within-class variation is whitened away, the same scale for every class: a failure spanning classes shares it."""
    out = torch.zeros(len(z), dtype=torch.float64)
    for k in labels.unique():
        members = labels == k
        part = z[members].double()
        centred = part - part.mean(0)
        covariance = centred.T @ centred / len(part)
        sphere = covariance.diagonal().mean() * torch.eye(part.shape[1], dtype=torch.float64)
        shrunk = (1 - shrinkage) * covariance + shrinkage * sphere
        shrunk = shrunk + VARIANCE_FLOOR * torch.eye(part.shape[1], dtype=torch.float64)
        whitened = torch.linalg.solve(shrunk, centred.T).T
        out[members] = torch.log((centred * whitened).sum(1) + EPS)
    std = out.std() if len(out) > 1 else torch.tensor(1.0)
    return (out - out.mean()) / (std if float(std) > 0 else 1.0)


@dataclass
class Slice:
    """One slice: the images (indices into the evaluation set) the mixture gives to one component. accuracy: the
    share the model gets right; rest_accuracy: the accuracy of the other images of the slice's classes, weighted by
    the slice's class counts (None when the slice holds every image of its classes); compared_accuracy: the slice's
    accuracy on its images of those classes (a class wholly inside has nothing to compare with); gap = rest_accuracy
    - compared_accuracy with its 95 % interval (gap_interval); score = gap x sqrt(size), the ranking key; exemplars: the members
    the component claims most surely (at most EXEMPLARS)."""

    component: int
    members: torch.Tensor
    accuracy: float
    rest_accuracy: float | None
    compared_accuracy: float | None
    gap: float | None
    gap_low: float | None
    gap_high: float | None
    score: float
    class_counts: dict[int, int]
    exemplars: torch.Tensor

    @property
    def size(self) -> int:
        return len(self.members)


EXEMPLARS = 8


def class_weights(labels: torch.Tensor, members: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (K,), rest mask (N,)): each class's share of the slice, over the classes that have images outside
    it (renormalized), and the mask of the images of those classes outside the slice."""
    inside = torch.zeros(len(labels), dtype=torch.bool)
    inside[members] = True
    counts = torch.bincount(labels[members], minlength=num_classes).double()
    outside = torch.bincount(labels[~inside], minlength=num_classes)
    counts = torch.where(outside > 0, counts, torch.zeros_like(counts))
    total = counts.sum()
    weights = counts / total if total > 0 else counts
    rest = ~inside & (weights[labels] > 0)
    return weights, rest


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion successes / n (n may be an effective, fractional size)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(p1: float, n1: float, p2: float, n2: float, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) of p1 - p2 from the two Wilson intervals: valid at 0 and 1,
    where a bootstrap or a normal interval collapses to a point."""
    l1, u1 = wilson(p1 * n1, n1, z)
    l2, u2 = wilson(p2 * n2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def gap_interval(
    correct: torch.Tensor, labels: torch.Tensor, members: torch.Tensor, num_classes: int
) -> tuple[float | None, float | None, float | None, float | None]:
    """(rest accuracy, gap, 95 % interval of the gap) of one slice. The rest accuracy is a class-weighted mean
    (class_weights); its interval uses its effective size 1 / sum_k(w_k^2 / n_k), the size of a plain proportion
    with the same binomial variance (Kish), and the gap's interval is difference_interval. The slice's side counts its
    images of those classes only (weighted by the same class shares, that is their plain mean): a class wholly inside
    the slice has no rest to be compared with. None where no class has images outside the slice."""
    weights, rest = class_weights(labels, members, num_classes)
    if not rest.any():
        return None, None, None, None
    right = correct.double()
    compared = members[weights[labels[members]] > 0]  # like for like: a class wholly inside has nothing to compare
    acc_slice = float(right[compared].mean())
    rest_n = torch.bincount(labels[rest], minlength=num_classes).double()
    rest_right = torch.bincount(labels[rest], weights=right[rest], minlength=num_classes).double()
    used = weights > 0
    rest_accuracy = float((weights[used] * rest_right[used] / rest_n[used]).sum())
    effective = 1.0 / float((weights[used] ** 2 / rest_n[used]).sum())
    low, high = difference_interval(rest_accuracy, effective, acc_slice, len(compared))
    return rest_accuracy, rest_accuracy - acc_slice, low, high


def dimension_weights(dims: int, atypicality_weight: float) -> torch.Tensor:
    """(dims + 1,) float64: the weight of each reduced-embedding dimension and, last, of the atypicality, which
    counts as atypicality_weight dimensions; they sum to 1 (the embedding's log-density averaged over dimensions)."""
    weights = torch.ones(dims + 1, dtype=torch.float64)
    weights[-1] = atypicality_weight
    return weights / weights.sum()


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def find_slices(
    features: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    dims: int = PCA_DIMS,
    label_weight: float = LABEL_WEIGHT,
    error_weight: float = ERROR_WEIGHT,
    atypicality_weight: float = ATYPICALITY_WEIGHT,
) -> list[Slice]:
    """Every non-empty slice of the evaluation set, best first (score: gap x sqrt(size), slices without a gap
    last). features (N, D): the model's embedding; logits (N, K); labels (N,). The mixture sees the reduced
    embedding plus the class-relative atypicality (Gaussian, averaged over the d + atypicality_weight dimensions it
    counts as), the soft correctness (the probability the model gives the label) and the label (label_weight)."""
    num_classes = logits.shape[1]
    z = reduce_embeddings(features, dims)
    z = torch.cat([z, atypicality(z, labels)[:, None]], dim=1)
    probability = logits.double().softmax(1).gather(1, labels.view(-1, 1))[:, 0]
    correct = logits.argmax(1) == labels
    with _one_thread():  # tensors of N x k x d: a second thread costs more in synchronization than it saves
        _, resp = fit_mixture(
            z,
            labels,
            probability,
            num_classes,
            k,
            label_weight=label_weight,
            error_weight=error_weight,
            embedding_weight=dimension_weights(z.shape[1] - 1, atypicality_weight),
            seed=seed,
        )
    assignment = resp.argmax(1)
    slices = []
    for component in range(k):
        members = torch.nonzero(assignment == component).flatten()
        if len(members) == 0:
            continue
        rest_accuracy, gap, low, high = gap_interval(correct, labels, members, num_classes)
        sure = resp[members, component].argsort(descending=True, stable=True)[:EXEMPLARS]
        counts = torch.bincount(labels[members], minlength=num_classes)
        slices.append(
            Slice(
                component=component,
                members=members,
                accuracy=float(correct[members].double().mean()),
                rest_accuracy=rest_accuracy,
                compared_accuracy=None if rest_accuracy is None or gap is None else rest_accuracy - gap,
                gap=gap,
                gap_low=low,
                gap_high=high,
                score=-math.inf if gap is None else gap * math.sqrt(len(members)),
                class_counts={c: int(counts[c]) for c in range(num_classes) if counts[c] > 0},
                exemplars=members[sure],
            )
        )
    return sorted(slices, key=lambda s: (-s.score, s.component))


def feature_names(families: dict[str, torch.Tensor], channels: int) -> tuple[torch.Tensor, list[str]]:
    """(N, F) and a name per column of the scan features (shortcut/scan.feature_families), 'grid' left out (its
    columns repeat the cells'): a region's columns are each channel's mean then standard deviation."""
    columns, names = [], []
    for family, values in families.items():
        if family == "grid":
            continue
        width = values.shape[1]
        if family.startswith(("cell ", "border ", "corner ")) and width == 2 * channels:
            suffix = [f"mean{_channel(c, channels)}" for c in range(channels)]
            suffix += [f"std{_channel(c, channels)}" for c in range(channels)]
        elif family == "histogram" and width % channels == 0:
            bins = width // channels
            suffix = [f"bin {b + 1}/{bins}{_channel(c, channels)}" for c in range(channels) for b in range(bins)]
        elif family == "brightness and contrast" and width == 2:
            suffix = ["brightness", "contrast"]
        else:
            suffix = [f"#{j}" for j in range(width)]
        columns.append(values.double())
        names += [f"{family} {s}" if family != "brightness and contrast" else s for s in suffix]
    return torch.cat(columns, dim=1), names


def _channel(c: int, channels: int) -> str:
    return "" if channels == 1 else f" ch{c}"


def within_class_differences(
    values: torch.Tensor, labels: torch.Tensor, members: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(difference, slice mean, rest mean), each (F,): per column, the slice's mean minus the mean of the rest of
    its classes, class by class and weighted by the slice's class counts (class_weights), so a slice's class mix
    never shows up as a difference."""
    weights, rest = class_weights(labels, members, num_classes)
    inside = torch.zeros(len(labels), dtype=torch.bool)
    inside[members] = True
    slice_mean = torch.zeros(values.shape[1], dtype=torch.float64)
    rest_mean = torch.zeros(values.shape[1], dtype=torch.float64)
    for c in torch.nonzero(weights > 0).flatten().tolist():
        slice_mean += weights[c] * values[inside & (labels == c)].double().mean(0)
        rest_mean += weights[c] * values[rest & (labels == c)].double().mean(0)
    return slice_mean - rest_mean, slice_mean, rest_mean


def pooled_within_class_std(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(F,): the square root of the within-class variance (population) averaged over the images."""
    total = torch.zeros(values.shape[1], dtype=torch.float64)
    for c in range(num_classes):
        part = values[labels == c].double()
        if len(part):
            total += ((part - part.mean(0)) ** 2).sum(0)
    return (total / len(values)).sqrt()


def distinguishing_features(
    values: torch.Tensor, names: list[str], labels: torch.Tensor, members: torch.Tensor, num_classes: int, top: int = 3
) -> list[dict[str, object]]:
    """The `top` scan features whose standardized mean difference (within_class_differences over the pooled
    within-class standard deviation) sets the slice furthest apart from the rest of its classes."""
    difference, _, _ = within_class_differences(values, labels, members, num_classes)
    spread = pooled_within_class_std(values, labels, num_classes)
    smd = torch.where(spread > 1e-12, difference / spread.clamp(min=1e-12), torch.zeros_like(difference))
    order = smd.abs().argsort(descending=True, stable=True)[:top]
    return [{"feature": names[j], "smd": float(smd[j])} for j in order.tolist() if float(smd[j]) != 0.0]


def cell_shares(attribution: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, grid * grid) float64: each image's share of its attribution (N, H, W) >= 0 in each cell of a grid x grid
    split, row by row from the top left (rows of zeros where an image has no attribution)."""
    n, h, w = attribution.shape
    cells = attribution.double().view(n, grid, h // grid, grid, w // grid).sum((2, 4)).flatten(1)
    total = cells.sum(1, keepdim=True)
    return torch.where(total > 0, cells / total.clamp(min=1e-30), torch.zeros_like(cells))


def distinguishing_regions(
    shares: torch.Tensor, grid: int, labels: torch.Tensor, members: torch.Tensor, num_classes: int, top: int = 2
) -> list[dict[str, object]]:
    """The `top` grid cells where the slice's grad x input mass exceeds the rest of its classes' most
    (within_class_differences of cell_shares): where the model looks on these images and not on their classmates."""
    difference, inside, outside = within_class_differences(shares, labels, members, num_classes)
    order = difference.argsort(descending=True, stable=True)[:top]
    return [
        {
            "region": f"cell {j // grid},{j % grid}",
            "slice_share": float(inside[j]),
            "rest_share": float(outside[j]),
            "difference": float(difference[j]),
        }
        for j in order.tolist()
    ]


def score_against(slices: list[Slice], truth: torch.Tensor) -> dict[str, float]:
    """Slices scored against known members (truth (N,) bool, e.g. the images whose planted shortcut disagrees with
    their label): the top slice's precision and recall, and the rank (1 = top) and scores of the slice with the
    best F1."""
    total = int(truth.sum())
    scored = []
    for s in slices:
        hit = int(truth[s.members].sum())
        precision = hit / s.size
        recall = hit / total if total else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        scored.append((precision, recall, f1))
    best = max(range(len(scored)), key=lambda i: (scored[i][2], -i))
    return {
        "n_truth": total,
        "top_precision": scored[0][0],
        "top_recall": scored[0][1],
        "best_rank": best + 1,
        "best_precision": scored[best][0],
        "best_recall": scored[best][1],
        "best_f1": scored[best][2],
    }
