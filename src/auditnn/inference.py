"""Batched inference helpers that leave the model's mode as they found it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from .data.stream import PixelStore, as_store, my_batches_of
from .errors import AuditError
from .runtime import gather_parts, my_batches, split_on_oom


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode (BatchNorm and Dropout frozen) and restore every submodule's mode afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training  # the flag itself: some modules (exported programs) refuse train()


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Turn parameter gradients off (input gradients only: the backward skips weight gradients) and restore them."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def check_logits(logits: torch.Tensor, n: int, where: str = "the model") -> None:
    """The model contract: (N, K) finite logits with K >= 2."""
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise AuditError(f"{where} returned shape {tuple(logits.shape)}; allowed: logits of shape ({n}, K) with K >= 2")
    if not torch.isfinite(logits).all():
        raise AuditError(f"{where} returned NaN or infinite logits; allowed: finite logits")


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, *, device: torch.device | None = None, batch_size: int = 1024
) -> torch.Tensor:
    """Logits (N, K) on CPU for images (N, C, H, W) in [0, 1], in eval mode, batch by batch."""
    device = device or model_device(model)
    outputs = []
    with eval_mode(model):
        for _, begin, end in my_batches(len(images), batch_size):  # this process's share under torchrun
            outputs += split_on_oom(lambda batch: [_logits(model, batch, device)], images[begin:end])
    gathered = gather_parts([torch.cat(outputs)] if outputs else [])
    return torch.cat(gathered) if gathered else torch.empty(0, 0)


def _logits(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    logits = model(images.to(device, non_blocking=True)).float()
    check_logits(logits, len(images))
    return logits.cpu()


def predict(
    model: nn.Module, images: torch.Tensor, *, device: torch.device | None = None, batch_size: int = 1024
) -> torch.Tensor:
    """Predicted classes (N,) int64 on the images' device."""
    return predict_logits(model, images, device=device, batch_size=batch_size).argmax(1).to(images.device)


def predictions(
    model: nn.Module, images: torch.Tensor | PixelStore, *, batch_size: int = 1024, workers: int | None = None
) -> torch.Tensor:
    """The model's class for every image, (N,) int64 on the CPU, read batch_size at a time (a store decodes files
    in `workers` processes); under torchrun each process predicts its own batches and the classes are gathered."""
    store, device = as_store(images), model_device(model)
    parts = []
    with torch.no_grad(), eval_mode(model):
        for _, _, _, x in my_batches_of(store, batch_size, workers=workers):
            parts.append(predicted_classes(model, x, device))
    gathered = gather_parts([torch.cat(parts)] if parts else [])
    return torch.cat(gathered) if gathered else torch.zeros(0, dtype=torch.long)


def predicted_classes(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The predicted classes (n,) int64 on the CPU of one batch (halved while it does not fit in memory)."""

    def run(batch: torch.Tensor) -> list[torch.Tensor]:
        logits = model(batch.to(device, non_blocking=True)).float()
        check_logits(logits, len(batch))
        return [logits.cpu().argmax(1)]

    return torch.cat(split_on_oom(run, images))
