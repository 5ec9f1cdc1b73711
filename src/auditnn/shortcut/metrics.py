"""Reliance metrics: group and worst-group accuracy, counterfactual flips, reliance, attribution mass.

All metrics are computed from the balanced test split, which holds every base test image once per shortcut
variant (laid out variant-major: copy v of base image i sits at v * n + i), and from the same images without any
shortcut.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..data.controlled import ControlledDataset, aligned_with_label
from ..errors import AuditError
from ..inference import eval_mode, frozen_parameters, model_device, predict

ATTRIBUTIONS = ("gradxinput", "ig")


@dataclass
class ShortcutMetrics:
    """Every number is a share in [0, 1]. 'Aligned' images carry the shortcut of their own class (or, with a target
    class, carry the tag exactly when they belong to it); 'conflicting' images carry another class's shortcut."""

    num_classes: int
    target_class: int | None
    clean_accuracy: float  # test images without any shortcut
    aligned_accuracy: float
    conflicting_accuracy: float
    gap: float  # aligned - conflicting
    worst_group_accuracy: float
    worst_group: str
    reliance: float  # max(0, (aligned - conflicting) / aligned): accuracy share lost when the shortcut points elsewhere
    follow_rate: float  # conflicting images predicted as the shortcut's class
    follow_rate_normalized: float  # max(0, (follow - 1/K) / (1 - 1/K)): how often the shortcut alone decides
    swap_flip_rate: float  # prediction changes when another class's shortcut replaces the own one (or the tag is added)
    remove_flip_rate: float  # prediction changes when the shortcut is removed
    attribution_mass: float | None = None  # share of |attribution| inside the shortcut mask
    # The chance level of attribution_mass: the mask's share of sum |x - baseline| (baseline black). Grad x input and
    # IG from black are zero on black pixels, so an attribution blind to the shortcut still lands on it in
    # proportion to the input's mass there, not to its area.
    attribution_chance: float | None = None
    attribution_ratio: float | None = None  # attribution_mass / attribution_chance: ~1 for a shortcut-blind model
    mask_share: float | None = None  # share of pixels inside the mask (its area; not the chance level)
    groups: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: torch.Tensor) -> float:
    return float(values.float().mean()) if values.numel() else float("nan")


def reliance_from_predictions(
    test_preds: torch.Tensor,
    clean_preds: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    target_class: int | None = None,
    classes: list[str] | None = None,
) -> ShortcutMetrics:
    """Pure arithmetic on predictions.

    test_preds: (V * n,) predictions on the balanced split, variant-major; V = K variants (shortcut id v), or 2 with
    a target class (v = 0 untagged, v = 1 tagged). clean_preds: (n,) on the same images without a shortcut.
    labels: (n,) the base images' labels.
    """
    n = len(labels)
    variants = num_classes if target_class is None else 2
    if test_preds.shape != (variants * n,) or clean_preds.shape != (n,):
        raise AuditError(f"predictions of shape {tuple(test_preds.shape)} do not fit {variants} variants x {n} images")
    names = classes or [str(k) for k in range(num_classes)]
    preds = test_preds.view(variants, n)
    y = labels.view(1, n).expand(variants, n)
    correct = preds == y
    if target_class is None:
        ids = torch.arange(variants).view(variants, 1).expand(variants, n)
        aligned = ids == y
        followed = preds == ids
        own = preds.gather(0, labels.view(1, n)).expand(variants, n)  # prediction on the aligned copy
        swap_flip = _mean((preds != own)[~aligned])
        remove_flip = _mean(clean_preds != own[0])
        group_of = [(k, names[k]) for k in range(variants)]
    else:
        tagged = torch.tensor([False, True]).view(2, 1).expand(2, n)
        in_target = y == target_class
        aligned = tagged == in_target
        followed = preds == target_class
        others, members = labels != target_class, labels == target_class
        swap_flip = _mean((preds[1] != preds[0])[others])  # adding the tag to other classes
        remove_flip = _mean((preds[0] != preds[1])[members])  # removing it from the tagged class
        group_of = [(0, "none"), (1, names[target_class])]
    conflicting = ~aligned
    acc_aligned, acc_conflicting = _mean(correct[aligned]), _mean(correct[conflicting])
    follow_mask = conflicting if target_class is None else conflicting & (y != target_class)
    follow = _mean(followed[follow_mask])
    chance = 1.0 / num_classes
    groups: list[dict[str, Any]] = []
    for v, (sid, sname) in enumerate(group_of):
        for k in range(num_classes):
            members_k = labels == k
            if members_k.any():
                groups.append(
                    {
                        "group": f"{names[k]} x {sname}",
                        "label": k,
                        "shortcut_id": sid if target_class is None else (target_class if sid else -1),
                        "aligned": bool(aligned[v, members_k][0]),
                        "n": int(members_k.sum()),
                        "accuracy": _mean(correct[v, members_k]),
                    }
                )
    worst = min(groups, key=lambda g: g["accuracy"])
    return ShortcutMetrics(
        num_classes=num_classes,
        target_class=target_class,
        clean_accuracy=_mean(clean_preds == labels),
        aligned_accuracy=acc_aligned,
        conflicting_accuracy=acc_conflicting,
        gap=acc_aligned - acc_conflicting,
        worst_group_accuracy=worst["accuracy"],
        worst_group=worst["group"],
        reliance=max(0.0, (acc_aligned - acc_conflicting) / acc_aligned) if acc_aligned > 0 else 0.0,
        follow_rate=follow,
        follow_rate_normalized=max(0.0, (follow - chance) / (1 - chance)),
        swap_flip_rate=swap_flip,
        remove_flip_rate=remove_flip,
        groups=groups,
    )


def logit_attribution(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, method: str = "gradxinput", steps: int = 16
) -> torch.Tensor:
    """|attribution| summed over channels, (N, H, W), for the logit of `classes` (N,).

    gradxinput: |x * d logit / dx|. ig: integrated gradients from a black image, `steps` midpoint samples.
    """
    if method not in ATTRIBUTIONS:
        raise AuditError(f"attribution '{method}' is unknown; allowed: {', '.join(ATTRIBUTIONS)}")
    device = model_device(model)
    x = images.to(device)
    index = classes.to(device).view(-1, 1)
    alphas = [1.0] if method == "gradxinput" else [(s + 0.5) / steps for s in range(steps)]
    total = torch.zeros_like(x)
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        for alpha in alphas:
            point = (x * alpha).requires_grad_(True)
            selected = model(point).gather(1, index).sum()
            (grad,) = torch.autograd.grad(selected, point)
            total += grad
    return (x * total / len(alphas)).abs().sum(dim=1).cpu()


def attribution_mass(
    attribution: torch.Tensor, masks: torch.Tensor, inputs: torch.Tensor
) -> tuple[float, float, float]:
    """(share of attribution inside the masks, share of sum |inputs| inside them, share of pixels inside them),
    each averaged over images whose mask and attribution are non-empty.

    attribution: (N, H, W) >= 0; masks: (N, 1, H, W) bool; inputs: (N, C, H, W), the images minus the
    attribution's baseline (the images themselves for grad x input and IG from black)."""
    flat_mask = masks.flatten(1).float()
    flat_attr = attribution.flatten(1)
    flat_input = inputs.abs().sum(1).flatten(1)
    keep = (flat_mask.sum(1) > 0) & (flat_attr.sum(1) > 0)
    if not keep.any():
        return float("nan"), float("nan"), float("nan")

    def share_inside(values: torch.Tensor) -> float:
        return float(((values * flat_mask).sum(1) / values.sum(1))[keep].mean())

    return share_inside(flat_attr), share_inside(flat_input), float(flat_mask[keep].mean(1).mean())


def measure_reliance(
    model: nn.Module,
    dataset: ControlledDataset,
    *,
    attribution: str = "gradxinput",
    attribution_images: int = 500,
    batch_size: int = 1024,
) -> ShortcutMetrics:
    """Predict on the balanced and clean test splits, then compute every reliance metric and the attribution mass
    on up to `attribution_images` shortcut-carrying test images (evenly spaced, so the same for every run)."""
    test, clean = dataset.test, dataset.test_clean
    test_preds = predict(model, test.images, batch_size=batch_size)
    clean_preds = predict(model, clean.images, batch_size=batch_size)
    metrics = reliance_from_predictions(
        test_preds, clean_preds, clean.labels, dataset.num_classes, dataset.target_class, dataset.classes
    )
    carrying = torch.nonzero(test.masks.flatten(1).any(1)).view(-1)
    if len(carrying) and attribution_images > 0:
        pick = carrying[torch.linspace(0, len(carrying) - 1, min(attribution_images, len(carrying))).long()]
        attr = logit_attribution(model, test.images[pick], test_preds[pick], attribution)
        mass, chance, share = attribution_mass(attr, test.masks[pick], test.images[pick])  # baseline: black
        metrics.attribution_mass, metrics.attribution_chance, metrics.mask_share = mass, chance, share
        metrics.attribution_ratio = mass / chance if chance > 0 else float("nan")
    return metrics


def shortcut_examples(model: nn.Module, dataset: ControlledDataset, per_kind: int = 6) -> dict[str, torch.Tensor]:
    """A few aligned and conflicting test images (spread over the labels) with predictions, |grad x input|
    attribution maps and shortcut masks: the pictures of the HTML report."""
    test = dataset.test
    aligned = aligned_with_label(test.labels, test.shortcut_ids, dataset.target_class)
    pictures: dict[str, torch.Tensor] = {}
    for name, members in (("aligned", aligned), ("conflicting", ~aligned)):
        candidates = torch.nonzero(members).view(-1)
        if not len(candidates):
            continue
        # One image per label, spread over the labels; within a label, a varying shortcut (variant-major layout).
        labels = torch.linspace(0, dataset.num_classes - 1, min(per_kind, dataset.num_classes)).round().long()
        chosen = []
        for i, k in enumerate(labels.tolist()):
            of_label = candidates[test.labels[candidates] == k]
            if len(of_label):
                chosen.append(of_label[(7 * i) % len(of_label)])
        pick = torch.stack(chosen)
        images = test.images[pick]
        preds = predict(model, images)
        pictures.update(
            {
                f"{name}/images": images,
                f"{name}/labels": test.labels[pick],
                f"{name}/predictions": preds.cpu(),
                f"{name}/shortcut_ids": test.shortcut_ids[pick],
                f"{name}/masks": test.masks[pick],
                f"{name}/attribution": logit_attribution(model, images, preds.cpu()),
            }
        )
    return pictures
