"""Deep Feature Reweighting (Kirichenko, Izmailov and Wilson 2022, "Last Layer Re-Training is Sufficient for
Robustness to Spurious Correlations"): keep a trained model's features, and retrain only its last linear layer on a
group-balanced set, where the spurious attribute no longer predicts the label.

The recipe follows the paper's code (dfr_evaluate_spurious.py):
- the penultimate features are standardized (mean 0, standard deviation 1 per feature);
- each fit is an L1-penalized logistic regression on a random subsample with the same number of images from every
  group: the smallest group's count (the paper's liblinear fits, one-vs-rest for several classes, become one
  multinomial fit here, linear.fit_logistic; the bias is not penalized);
- the L1 strength is chosen by worst-group accuracy: fit on a balanced subsample of one half of the retraining
  images, standardized by that subsample, and score the whole other half (the halves are drawn within each group,
  so every group is in both; the paper draws them over all images);
- the final layer averages an ensemble of fits, each on a balanced subsample of all the retraining images,
  standardized by all of them;
- the standardization is then folded into the weights, so the new layer takes the raw features.

L1 strengths are written as the paper's sklearn objective weighs them: l1 * ||W||_1 + sum_i CE_i over the n images
of a fit, l1 = 1 / C; the paper's grid C = 1, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01 is L1_GRID. fit_logistic takes the
mean cross-entropy, so it is given l1 / n."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..data.stream import PixelStore
from ..errors import AuditError
from ..linear import fit_logistic
from ..models.features import classifier_layer, embed

PAPER_C = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)  # sklearn's C, the inverse L1 strength, as the paper's code lists it
L1_GRID = tuple(1.0 / c for c in PAPER_C)
ENSEMBLE = 10  # subsampled fits averaged into the final layer
MIN_PER_GROUP = 2  # one image to fit on and one to tune on
MAX_ITER = 1000  # proximal steps per fit


@dataclass
class DFRResult:
    """What retraining did. layer: the retrained layer's name in the model; l1: the chosen L1 strength (against the
    summed cross-entropy, = 1 / the paper's C); tuning: [{"l1", "worst_group_accuracy"}] on the tuning half, one
    per grid value; per_group: images each final subsample takes from every group (the smallest group's count);
    groups: the number of groups; n: images retrained on; ensemble: fits averaged; group_counts: images per group
    (group index order); converged: whether every fit met fit_logistic's tolerance within MAX_ITER steps."""

    layer: str
    l1: float
    tuning: list[dict[str, float]]
    per_group: int
    groups: int
    n: int
    ensemble: int
    group_counts: list[int] = field(default_factory=list)
    converged: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DFRFit:
    """The retrained layer on raw features: weight (K, D) and bias (K,) float64, so logits = x @ weight.T + bias;
    and the same layer before the standardization was folded in: std_weight, std_bias on (x - mean) / scale, where
    mean and scale (D,) are those of the retraining features (scale 1 for a feature constant there)."""

    weight: torch.Tensor
    bias: torch.Tensor
    std_weight: torch.Tensor
    std_bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    result: DFRResult


def group_counts(groups: torch.Tensor, num_groups: int) -> list[int]:
    """Images per group, 0 .. num_groups - 1."""
    return torch.bincount(groups, minlength=num_groups).tolist()


def balanced_subsample(groups: torch.Tensor, num_groups: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (num_groups * m,) into `groups`: m = the smallest group's count, drawn without replacement from
    every group, group by group."""
    members = [torch.nonzero(groups == g).view(-1) for g in range(num_groups)]
    m = min(len(x) for x in members)
    return torch.cat([x[torch.randperm(len(x), generator=generator)[:m]] for x in members])


def tuning_halves(
    groups: torch.Tensor, num_groups: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, score) indices: each group's images in random order, the first ceil(n / 2) to fit on, the rest to
    score; a group of 2 or more images is in both."""
    fit, score = [], []
    for g in range(num_groups):
        members = torch.nonzero(groups == g).view(-1)
        members = members[torch.randperm(len(members), generator=generator)]
        half = (len(members) + 1) // 2
        fit.append(members[:half])
        score.append(members[half:])
    return torch.cat(fit), torch.cat(score)


def moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale) (D,) of features (N, D): the population standard deviation, 1 where it is 0."""
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def fold_standardization(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer on (x - mean) / scale rewritten on x: W (x - mean) / scale + b = (W / scale) x + (b - (W / scale) mean)."""
    raw = weight / scale
    return raw, bias - raw @ mean


def worst_group_accuracy(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, num_groups: int) -> float:
    """The lowest accuracy over the groups present (logits (N, K), labels and groups (N,))."""
    correct = (logits.argmax(dim=1) == labels).double()
    return min(float(correct[groups == g].mean()) for g in range(num_groups) if bool((groups == g).any()))


def _fits(
    x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, num_classes: int, l1: float
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Fit one L1 logistic regression per row of index (B, n) on x[index] and return the mean (weight, bias) and
    whether every fit converged. l1 weighs ||W||_1 against the summed cross-entropy of n images."""
    fit = fit_logistic(x[index], labels[index], num_classes, l1=l1 / index.shape[1], max_iter=MAX_ITER)
    return fit.weight.mean(dim=0), fit.bias.mean(dim=0), bool(fit.converged.all())


def _check(
    features: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, group_names: list[str] | None, ensemble: int
) -> int:
    """The number of groups, after refusing inputs DFR cannot use."""
    n = len(features)
    if labels.shape != (n,) or groups.shape != (n,) or groups.dtype != torch.int64 or labels.dtype != torch.int64:
        raise AuditError(
            f"{n} images with labels {tuple(labels.shape)} and groups {tuple(groups.shape)}; "
            "allowed: one int64 label and one int64 group per image"
        )
    if ensemble < 1:
        raise AuditError(f"ensemble {ensemble}; allowed: an integer >= 1")
    if n == 0 or int(groups.min()) < 0:
        raise AuditError("groups are empty or negative; allowed: group indices 0 .. G-1, each with images")
    num_groups = int(groups.max()) + 1
    for g, count in enumerate(group_counts(groups, num_groups)):
        if count < MIN_PER_GROUP:
            name = f"'{group_names[g]}'" if group_names is not None else str(g)
            raise AuditError(
                f"group {name} has {count} image{'s' if count != 1 else ''} to retrain on; DFR needs at least "
                f"{MIN_PER_GROUP} per group (one to fit on, one to tune on): give more annotated images"
            )
    return num_groups


def fit_dfr(
    features: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    *,
    num_classes: int,
    seed: int,
    l1_grid: tuple[float, ...] = L1_GRID,
    ensemble: int = ENSEMBLE,
    layer: str = "",
    group_names: list[str] | None = None,
) -> DFRFit:
    """DFR on features (N, D) (module docstring): the new layer, in float64 on the features' device. labels (N,)
    int64 in [0, num_classes); groups (N,) int64 0 .. G-1, every group with at least MIN_PER_GROUP images (else
    AuditError naming the group, by group_names when given). Seeded: the same inputs give the same layer."""
    if not l1_grid or any(not l1 > 0 for l1 in l1_grid):
        raise AuditError(f"l1 grid {list(l1_grid)}; allowed: one or more numbers > 0")
    num_groups = _check(features, labels, groups, group_names, ensemble)
    x = features.double()
    labels, groups = labels.to(x.device), groups.to(x.device)
    generator = torch.Generator().manual_seed(seed)
    cpu_groups = groups.cpu()

    fit_half, score_half = tuning_halves(cpu_groups, num_groups, generator)
    fit_index = fit_half[balanced_subsample(cpu_groups[fit_half], num_groups, generator)].to(x.device)
    score_index = score_half.to(x.device)
    mean, scale = moments(x[fit_index])
    tuning = []
    for l1 in l1_grid:
        weight, bias, _ = _fits((x - mean) / scale, labels, fit_index.unsqueeze(0), num_classes, l1)
        logits = ((x[score_index] - mean) / scale) @ weight.T + bias
        tuning.append(
            {
                "l1": l1,
                "worst_group_accuracy": worst_group_accuracy(
                    logits, labels[score_index], groups[score_index], num_groups
                ),
            }
        )
    best = max(tuning, key=lambda row: row["worst_group_accuracy"])["l1"]  # the first of equals, as np.argmax

    mean, scale = moments(x)
    index = torch.stack([balanced_subsample(cpu_groups, num_groups, generator) for _ in range(ensemble)]).to(x.device)
    std_weight, std_bias, converged = _fits((x - mean) / scale, labels, index, num_classes, best)
    weight, bias = fold_standardization(std_weight, std_bias, mean, scale)
    counts = group_counts(cpu_groups, num_groups)
    result = DFRResult(
        layer=layer,
        l1=best,
        tuning=tuning,
        per_group=min(counts),
        groups=num_groups,
        n=len(x),
        ensemble=ensemble,
        group_counts=counts,
        converged=converged,
    )
    return DFRFit(weight, bias, std_weight, std_bias, mean, scale, result)


def replace_layer(model: nn.Module, name: str, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A deep copy of `model` whose module `name` is a new nn.Linear with this weight (K, D) and bias (K,), in the
    old layer's dtype, device and mode."""
    new_model = copy.deepcopy(model)
    old = new_model.get_submodule(name)
    assert isinstance(old, nn.Linear)  # classifier_layer found it
    layer = nn.Linear(weight.shape[1], weight.shape[0], device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    layer.train(old.training)
    parent, _, leaf = name.rpartition(".")
    setattr(new_model.get_submodule(parent), leaf, layer)
    return new_model


def retrain_last_layer(
    model: nn.Module,
    images: torch.Tensor | PixelStore,
    labels: torch.Tensor,
    groups: torch.Tensor,
    *,
    num_classes: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    l1_grid: tuple[float, ...] = L1_GRID,
    ensemble: int = ENSEMBLE,
    group_names: list[str] | None = None,
) -> tuple[nn.Module, DFRResult]:
    """Retrain the last linear layer of `model` (models.features.classifier_layer with num_classes outputs) with
    DFR on (images, labels, groups): images (N, C, H, W) in [0, 1] or a store, read batch_size at a time on
    `device`; labels (N,) int64 in [0, num_classes); groups (N,) int64, 0 .. G-1, one per (label x attribute)
    group. Returns (a deep copy of the model with that layer replaced, what was done); the model itself is left as
    it was. Every group needs at least MIN_PER_GROUP images; fewer -> AuditError naming the group (by group_names
    when given) and its count. Seeded: the same inputs and seed give the same layer."""
    name, layer = classifier_layer(model, num_classes)
    features = embed(model, images, batch_size=batch_size, device=device)
    if features.shape[1] != layer.in_features:
        raise AuditError(
            f"the classifier layer '{name}' takes {layer.in_features} features but receives {features.shape[1]} "
            "values per image; allowed: a last layer applied once per image to its feature vector"
        )
    fit = fit_dfr(
        features.to(device),
        labels,
        groups,
        num_classes=num_classes,
        seed=seed,
        l1_grid=l1_grid,
        ensemble=ensemble,
        layer=name,
        group_names=group_names,
    )
    return replace_layer(model, name, fit.weight, fit.bias), fit.result
