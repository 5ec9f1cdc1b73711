"""fit(): train a classifier on in-memory images, on the GPU when present, deterministic on CPU."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import AuditError
from .inference import predict
from .models import PixelModel, build_model
from .models.load import channel_stats
from .runtime import seed_everything

if TYPE_CHECKING:
    from .data.controlled import ControlledDataset

ProgressFn = Callable[[int, int, dict[str, float]], None]


MAX_LR = 1e3  # Adam's step is about lr in parameter units: larger rates only diverge or overflow


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # small batches: many updates per epoch on a small dataset
    lr: float = 2e-3  # Adam step size
    weight_decay: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1:
            raise AuditError(f"epochs {self.epochs}; allowed: at least 1")
        if self.batch_size < 1:
            raise AuditError(f"batch size {self.batch_size}; allowed: at least 1")
        if not 0 < self.lr <= MAX_LR:
            raise AuditError(f"learning rate {self.lr:g}; allowed: > 0, at most {MAX_LR:g}")


@dataclass
class GroupDRO:
    """Online group DRO (Sagawa et al. 2020, Algorithm 1, as in their code): a weight q_g per group, updated every
    batch as q_g <- q_g * exp(eta * (loss_g + C / sqrt(n_g))) and normalized; the batch's loss is sum_g q_g loss_g.

    groups: (N,) int64, each training image's group in 0 .. num_groups - 1; loss_g: the mean cross-entropy of the
    batch's images of group g (0 for a group absent from the batch); n_g: the group's training images; eta: q's step
    size (the paper's code: 0.01); adjustment: C, the generalization adjustment (their default 0). q starts uniform
    over the groups that have training images and stays 0 on the others."""

    groups: torch.Tensor
    num_groups: int
    eta: float = 0.01
    adjustment: float = 0.0
    q: torch.Tensor = field(init=False)
    counts: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if not self.eta >= 0 or not self.adjustment >= 0:
            raise AuditError(f"group DRO eta {self.eta:g}, adjustment {self.adjustment:g}; allowed: both >= 0")
        self.counts = torch.bincount(self.groups.cpu(), minlength=self.num_groups).float()
        present = (self.counts > 0).float()
        self.q = present / present.sum()

    def loss(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """One step: update q from this batch's per-image losses (B,) and groups (B,); return sum_g q_g loss_g."""
        device = losses.device
        self.q, self.counts = self.q.to(device), self.counts.to(device)
        in_batch = torch.bincount(groups, minlength=self.num_groups).float()
        group_loss = torch.zeros(self.num_groups, device=device).index_add(0, groups, losses) / in_batch.clamp(min=1)
        adjusted = group_loss.detach() + self.adjustment / self.counts.clamp(min=1).sqrt()
        q = self.q * torch.exp(self.eta * adjusted)
        self.q = q / q.sum()
        return (self.q * group_loss).sum()


@dataclass
class TrainResult:
    epochs: int
    seconds: float
    images_per_second: float
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, train_accuracy, val_accuracy


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    device: torch.device,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: ProgressFn | None = None,
    weights: torch.Tensor | None = None,
    dro: GroupDRO | None = None,
) -> TrainResult:
    """Train `model` (a PixelModel: images (N, C, H, W) in [0, 1] -> logits) with Adam and cross-entropy.

    The whole dataset is moved to the device once (no DataLoader for in-memory tensors); bf16 autocast on CUDA with
    fp32 master weights. Batches come from a seeded generator, so the same seed gives the same model on CPU.
    weights: (N,) per-image loss weights >= 0; a batch's loss is then sum(w * loss) / sum(w). dro: group DRO's loss
    instead. Without either, the plain mean cross-entropy (ERM). The history's loss is the plain mean in every case.
    """
    config.validate()
    _check_weights(weights, dro, len(labels))
    model.to(device).train()
    x_all, y_all = images.to(device), labels.to(device)
    w_all = None if weights is None else weights.to(device, torch.float32)
    g_all = None if dro is None else dro.groups.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    use_bf16 = device.type == "cuda"
    n = len(y_all)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        losses, hits = [], []  # summed once per epoch: one sync, no per-batch accumulation kernels
        for begin in range(0, n, config.batch_size):
            idx = order[begin : begin + config.batch_size]
            x, y = x_all[idx], y_all[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext():
                logits = model(x)
                if w_all is None and g_all is None:
                    loss = F.cross_entropy(logits.float(), y, reduction="sum")
                    step_loss = loss / len(y)
                else:
                    each = F.cross_entropy(logits.float(), y, reduction="none")
                    loss = each.sum()
                    step_loss = _step_loss(each, idx, w_all, g_all, dro)
            optimizer.zero_grad(set_to_none=True)
            step_loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            hits.append((logits.detach().argmax(1) == y).sum())
        row = {
            "epoch": epoch + 1,
            "loss": float(torch.stack(losses).sum()) / n,
            "train_accuracy": float(torch.stack(hits).sum()) / n,
        }
        if val is not None:
            preds = predict(model, val[0], device=device)
            row["val_accuracy"] = float((preds == val[1]).float().mean())
            model.train()
        history.append(row)
        if progress is not None:
            progress(epoch + 1, config.epochs, row)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.eval()
    return TrainResult(config.epochs, seconds, n * config.epochs / max(seconds, 1e-9), history)


def _check_weights(weights: torch.Tensor | None, dro: GroupDRO | None, n: int) -> None:
    if weights is not None and dro is not None:
        raise AuditError("loss weights and group DRO were both given; allowed: one of them")
    if weights is not None and (
        weights.shape != (n,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any())
    ):
        raise AuditError(f"loss weights of shape {tuple(weights.shape)}; allowed: ({n},) finite values >= 0")
    if weights is not None and not float(weights.sum()) > 0:
        raise AuditError("loss weights sum to 0; allowed: at least one image with a positive weight")
    if dro is not None and dro.groups.shape != (n,):
        raise AuditError(f"group DRO groups of shape {tuple(dro.groups.shape)}; allowed: ({n},)")


def _step_loss(
    each: torch.Tensor,
    idx: torch.Tensor,
    weights: torch.Tensor | None,
    groups: torch.Tensor | None,
    dro: GroupDRO | None,
) -> torch.Tensor:
    """The loss a batch steps on: the weighted mean of its per-image losses, or group DRO's."""
    if dro is not None and groups is not None:
        return dro.loss(each, groups[idx])
    assert weights is not None
    w = weights[idx]
    return (w * each).sum() / w.sum().clamp(min=1e-12)


def new_classifier(images: torch.Tensor, classes: list[str], arch: str, width: int | None = None) -> PixelModel:
    """An untrained `arch` for images (N, C, H, W) in [0, 1], normalized with their per-channel mean and std."""
    _, channels, height, _ = images.shape
    return PixelModel(build_model(arch, channels, height, len(classes), width), *channel_stats(images))


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    arch: str,
    config: TrainConfig,
    device: torch.device,
    *,
    width: int | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    dataset_info: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    weights: torch.Tensor | None = None,
    dro: GroupDRO | None = None,
) -> tuple[PixelModel, TrainResult, dict[str, Any]]:
    """Build `arch` for these images, normalize with their channel statistics, fit (with fit's loss weights or
    group DRO when given), and write the model card."""
    _, channels, height, width_px = images.shape
    seed_everything(config.seed)  # the weight initialisation draws from the global generator
    model = new_classifier(images, classes, arch, width)
    result = fit(model, images, labels, config, device=device, val=val, progress=progress, weights=weights, dro=dro)
    card = {
        "format": "auditnn.model",
        "format_version": 1,
        "architecture": {"name": arch, "width": width},
        "classes": list(classes),
        "input_shape": [channels, height, width_px],
        "normalization": {name: model.get_buffer(name).flatten().tolist() for name in ("mean", "std")},
        "dataset": dataset_info or {},
        "training": {**asdict(config), "seconds": result.seconds, "images_per_second": result.images_per_second},
        "metrics": result.history[-1],
    }
    return model, result, card


def train_on_controlled(
    dataset: ControlledDataset,
    arch: str,
    config: TrainConfig,
    device: torch.device,
    *,
    width: int | None = None,
    progress: ProgressFn | None = None,
    weights: torch.Tensor | None = None,
    dro: GroupDRO | None = None,
) -> tuple[PixelModel, TrainResult, dict[str, Any]]:
    """train_classifier on a controlled dataset's train split, validated on its val split (loss weights and group DRO
    as fit takes them, indexed like the train split)."""
    from .data.controlled import manifest_digest

    info = {
        "manifest_hash": manifest_digest(dataset.manifest),
        "base": dataset.manifest["base"],
        "shortcut": dataset.manifest["shortcut"],
        "rho": dataset.manifest["rho"],
    }
    return train_classifier(
        dataset.train.images,
        dataset.train.labels,
        dataset.classes,
        arch,
        config,
        device,
        width=width,
        val=(dataset.val.images, dataset.val.labels),
        dataset_info=info,
        progress=progress,
        weights=weights,
        dro=dro,
    )
