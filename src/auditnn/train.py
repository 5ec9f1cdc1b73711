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
) -> TrainResult:
    """Train `model` (a PixelModel: images (N, C, H, W) in [0, 1] -> logits) with Adam and cross-entropy.

    The whole dataset is moved to the device once (no DataLoader for in-memory tensors); bf16 autocast on CUDA with
    fp32 master weights. Batches come from a seeded generator, so the same seed gives the same model on CPU.
    """
    config.validate()
    model.to(device).train()
    x_all, y_all = images.to(device), labels.to(device)
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
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            (loss / len(y)).backward()
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
) -> tuple[PixelModel, TrainResult, dict[str, Any]]:
    """Build `arch` for these images, normalize with their channel statistics, fit, and write the model card."""
    _, channels, height, width_px = images.shape
    seed_everything(config.seed)  # the weight initialisation draws from the global generator
    model = new_classifier(images, classes, arch, width)
    result = fit(model, images, labels, config, device=device, val=val, progress=progress)
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
) -> tuple[PixelModel, TrainResult, dict[str, Any]]:
    """train_classifier on a controlled dataset's train split, validated on its val split."""
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
    )
