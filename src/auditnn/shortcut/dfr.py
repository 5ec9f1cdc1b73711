"""Deep Feature Reweighting (Kirichenko, Izmailov and Wilson 2022, "Last Layer Re-Training is Sufficient for
Robustness to Spurious Correlations"): keep a trained model's features, and retrain only its last linear layer on a
group-balanced set, where the spurious attribute no longer predicts the label.

The recipe follows the paper's code: the penultimate features are standardized (mean 0, standard deviation 1 per
feature, over the retraining images); each fit is an L1-penalized logistic regression on a random subsample with
the same number of images from every group (the smallest group's count); the L1 strength is chosen by worst-group
accuracy, fitting on one half of the retraining images and scoring the other; the final layer averages an
ensemble of fits on subsamples of all of them; the standardization is then folded into the weights, so the new
layer takes the raw features."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..data.stream import PixelStore

L1_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)  # the paper's C grid is 1/l1 for these: (1, 1.4, 3.3, 10, 14, 33, 100)


@dataclass
class DFRResult:
    """What retraining did. layer: the retrained layer's name in the model; l1: the chosen L1 strength (per image,
    on standardized features); tuning: [{"l1", "worst_group_accuracy"}] on the tuning half, one per grid value;
    per_group: images each balanced subsample takes from every group; groups: the number of groups; n: images the
    retraining saw; ensemble: fits averaged."""

    layer: str
    l1: float
    tuning: list[dict[str, float]]
    per_group: int
    groups: int
    n: int
    ensemble: int
    group_counts: list[int] = field(default_factory=list)  # images per group, group index order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    ensemble: int = 10,
) -> tuple[nn.Module, DFRResult]:
    """Retrain the last linear layer of `model` (models.features.classifier_layer) with DFR on (images, labels,
    groups): images (N, C, H, W) in [0, 1] or a store; labels (N,) int64 in [0, num_classes); groups (N,) int64,
    0..G-1, one per (label x attribute) group. Returns (a deep copy of the model with that layer replaced, what was
    done); the model itself is left as it was. Every group needs at least 2 images (one per tuning half); fewer ->
    AuditError naming the group's count. Seeded: the same inputs and seed give the same layer."""
    raise NotImplementedError
