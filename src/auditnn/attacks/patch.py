"""A universal adversarial patch (Brown et al. 2017): one patch optimized over many images, with expectation over
random location, rotation and scale; evaluated on held-out images beside a random-noise patch of the same size."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import AuditError, InvariantError, allowed
from ..inference import check_logits, eval_mode, frozen_parameters, model_device
from ..io import atomic_torch_save, atomic_write_bytes
from .base import per_sample_loss

if TYPE_CHECKING:
    from ..subject import EvalData

SHAPES = ("square", "circle")


@dataclass
class PatchConfig:
    """size: patch side as a fraction of the image side, in (0, 1). target: class the patch pushes towards
    (None: untargeted, away from the label). steps: optimization steps, each on one batch of training images.
    rotation: largest rotation in degrees; scale: (low, high) multipliers of the side, during optimization."""

    size: float = 0.3
    shape: str = "square"
    target: int | None = 0
    steps: int = 300
    batch_size: int = 128
    lr: float = 0.05  # Adam step on patch pixels in [0, 1]
    rotation: float = 30.0
    scale: tuple[float, float] = (0.8, 1.2)
    seed: int = 0

    def validate(self, num_classes: int | None = None) -> None:
        if not 0.0 < self.size < 1.0:
            raise AuditError(f"patch size {self.size:g} is outside (0, 1); allowed: a fraction of the image side")
        if self.shape not in SHAPES:
            raise AuditError(f"patch shape '{self.shape}' is unknown; allowed: {allowed(SHAPES)}")
        if self.steps < 1:
            raise AuditError(f"steps {self.steps}; allowed: at least 1")
        if num_classes is not None and self.target is not None and not 0 <= self.target < num_classes:
            raise AuditError(f"target class {self.target} is out of range; allowed: 0 .. {num_classes - 1}")


@dataclass
class PatchResult:
    patch: torch.Tensor  # (C, s, s) in [0, 1]
    mask: torch.Tensor  # (1, s, s) in {0, 1}
    target: int | None
    accuracy_clean: float
    accuracy_with_patch: float
    target_success_rate: float | None  # held-out images not of the target class, classified as the target
    accuracy_with_noise_patch: float
    noise_target_success_rate: float | None
    optimization_seconds: float
    steps: int
    history: list[float] = field(default_factory=list)  # training loss every 10% of the steps
    examples: dict[str, torch.Tensor] = field(default_factory=dict)  # a few patched test images and predictions
    images: str | None = None  # which images it was fitted and scored on, in words (fit_patch sets it)
    n_fit: int | None = None  # images the patch was optimized on (optimize_patch sets it)
    n_scored: int | None = None  # held-out images the accuracies and rates above are over (optimize_patch sets it)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("patch", "mask", "examples")}


def patch_mask(side: int, shape: str) -> torch.Tensor:
    if shape == "square":
        return torch.ones(1, side, side)
    axis = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return ((xx**2 + yy**2) <= 1.0).float().unsqueeze(0)


def apply_patch(
    images: torch.Tensor,
    patch: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: torch.Generator,
    rotation: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste `patch` at a random place (and rotation and scale) into every image, differentiably in the patch.
    Returns (patched images (N, C, H, W) in [0, 1], coverage (N, 1, H, W) in [0, 1])."""
    n, c, h, w = images.shape
    side = patch.shape[-1]
    device = images.device
    # The patch sits centred on a canvas of the image's size; an affine map moves, turns and scales it.
    canvas = torch.zeros(1, c + 1, h, w, device=device)
    top, left = (h - side) // 2, (w - side) // 2
    # Premultiplied: the content channels already carry the mask, so bilinear edges blend once, not twice.
    canvas[0, :c, top : top + side, left : left + side] = patch * mask
    canvas[0, c:, top : top + side, left : left + side] = mask
    canvas = canvas.expand(n, -1, -1, -1)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotation)
    zoom = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator)
    half = side * zoom.max().item() * math.sqrt(2) / 2  # keep the turned, scaled patch inside the frame
    room_x, room_y = max(0.0, (w / 2 - half) / (w / 2)), max(0.0, (h / 2 - half) / (h / 2))
    shift = torch.stack(
        [(torch.rand(n, generator=generator) * 2 - 1) * room_x, (torch.rand(n, generator=generator) * 2 - 1) * room_y],
        dim=1,
    )
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid maps output coords to input coords: the inverse of "scale, rotate, then shift".
    theta = torch.stack(
        [
            torch.stack([cos, sin, -(cos * shift[:, 0] + sin * shift[:, 1])], 1),
            torch.stack([-sin, cos, -(-sin * shift[:, 0] + cos * shift[:, 1])], 1),
        ],
        1,
    ).to(device)
    grid = F.affine_grid(theta, [n, c + 1, h, w], align_corners=False)
    placed = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    content, coverage = placed[:, :c], placed[:, c:].clamp(0.0, 1.0)
    return (images * (1 - coverage) + content).clamp(0.0, 1.0), coverage


def _predict_patched(model, images, patch, mask, generator, batch_size) -> torch.Tensor:  # noqa: ANN001
    preds = []
    with torch.no_grad():
        for begin in range(0, len(images), batch_size):
            x, _ = apply_patch(images[begin : begin + batch_size], patch, mask, generator=generator)
            logits = model(x).float()
            check_logits(logits, len(x))
            preds.append(logits.argmax(1))
    return torch.cat(preds)


def optimize_patch(
    model: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    config: PatchConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> PatchResult:
    """Optimize one patch over training images (expectation over place, rotation and scale), then evaluate it on
    held-out images at random places (seeded), next to a uniform-noise patch of equal size and shape."""
    device = model_device(model)
    c, h, w = train_images.shape[1:]
    side = max(1, round(config.size * min(h, w)))
    gen = torch.Generator().manual_seed(config.seed)
    mask = patch_mask(side, config.shape).to(device)
    patch = torch.rand(c, side, side, generator=gen).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([patch], lr=config.lr)
    history: list[float] = []
    train_images, train_labels = train_images.to(device), train_labels.to(device)
    start = time.perf_counter()
    with eval_mode(model), frozen_parameters(model):
        with torch.no_grad():
            check_logits(model(train_images[:2]).float(), min(2, len(train_images)))
        for step in range(config.steps):
            idx = torch.randint(0, len(train_labels), (min(config.batch_size, len(train_labels)),), generator=gen).to(
                device
            )
            x, y = train_images[idx], train_labels[idx]
            patched, _ = apply_patch(x, patch, mask, generator=gen, rotation=config.rotation, scale=config.scale)
            logits = model(patched).float()
            targets = None if config.target is None else torch.full_like(y, config.target)
            loss = -per_sample_loss(logits, y, targets).sum()  # minimize: reach the target / leave the label
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                patch.clamp_(0.0, 1.0)
            if (step + 1) % max(1, config.steps // 10) == 0:
                history.append(float(loss.detach()) / len(y))
                if progress is not None:
                    progress(step + 1, config.steps, history[-1])
        seconds = time.perf_counter() - start
        final = patch.detach()
        if not torch.isfinite(final).all() or final.min() < 0 or final.max() > 1:
            raise InvariantError("the optimized patch left the [0, 1] box or holds NaN")
        noise = torch.rand(final.shape, generator=gen).to(device)
        x_test, y_test = test_images.to(device), test_labels.to(device)
        with torch.no_grad():
            clean_pred = torch.cat([model(x_test[b : b + 512]).float().argmax(1) for b in range(0, len(x_test), 512)])
        eval_seed = config.seed + 1  # the same random places for the patch and its noise control
        adv_pred = _predict_patched(model, x_test, final, mask, torch.Generator().manual_seed(eval_seed), 512)
        noise_pred = _predict_patched(model, x_test, noise, mask, torch.Generator().manual_seed(eval_seed), 512)
        shown, _ = apply_patch(
            test_images[:8].to(device), final, mask, generator=torch.Generator().manual_seed(eval_seed)
        )

    def rate(pred: torch.Tensor) -> float | None:
        if config.target is None:
            return None
        others = y_test != config.target
        return float((pred[others] == config.target).float().mean()) if others.any() else None

    return PatchResult(
        patch=final.cpu(),
        mask=mask.cpu(),
        target=config.target,
        accuracy_clean=float((clean_pred == y_test).float().mean()),
        accuracy_with_patch=float((adv_pred == y_test).float().mean()),
        target_success_rate=rate(adv_pred),
        accuracy_with_noise_patch=float((noise_pred == y_test).float().mean()),
        noise_target_success_rate=rate(noise_pred),
        optimization_seconds=seconds,
        steps=config.steps,
        n_fit=len(train_labels),
        n_scored=len(y_test),
        history=history,
        examples={"images": shown.cpu(), "predictions": adv_pred[:8].cpu(), "labels": test_labels[:8].cpu()},
    )


def _patch_plan(data: EvalData) -> tuple[bool, str]:
    """(halve the evaluation images?, which images the patch is fitted and scored on, in words). Fit and score use
    one kind of image: a controlled dataset's training images carry its planted shortcut, its test images do not."""
    if data.description.get("test") == "test_clean":
        return True, (
            "fitted on a seeded half of the stamp-free test images, scored on the other half "
            "(the training images carry the planted shortcut)"
        )
    if data.fitted_on_test:
        return True, "fitted on a seeded half of the evaluation images, scored on the other half (no training images)"
    return False, "fitted on the training images, scored on the held-out test images"


def patch_split(data: EvalData, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fit images, labels, held-out images, labels) for the patch: the training and test images when they are of
    one kind, else the evaluation images halved (seeded); never judged on the images it was fitted on."""
    if not _patch_plan(data)[0]:
        return data.train_images, data.train_labels, data.test_images, data.test_labels
    order = torch.randperm(len(data.test_labels), generator=torch.Generator().manual_seed(seed))
    half = len(order) // 2
    fit, held = order[:half], order[half:]
    return data.test_images[fit], data.test_labels[fit], data.test_images[held], data.test_labels[held]


def fit_patch(model: nn.Module, data: EvalData, config: PatchConfig, seed: int) -> PatchResult:
    """optimize_patch on patch_split's images; the result says which images those were."""
    result = optimize_patch(model, *patch_split(data, seed), config)
    result.images = _patch_plan(data)[1]
    return result


def png_bytes(image: torch.Tensor, scale: int = 1) -> bytes:
    """(C, H, W) in [0, 1] -> PNG bytes, nearest-neighbour upscaled by `scale`."""
    from PIL import Image

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    array = pixels.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else np.ascontiguousarray(array))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def save_patch_png(result: PatchResult, path: Path) -> Path:
    """The patch as a picture (8x upscaled; outside a circle's mask, black)."""
    return atomic_write_bytes(path, png_bytes(result.patch * result.mask, scale=8))


def save_patch_tensors(result: PatchResult, path: Path) -> Path:
    """The patch and mask tensors and the target, for applying the patch elsewhere."""
    return atomic_torch_save(path, {"patch": result.patch, "mask": result.mask, "target": result.target})
