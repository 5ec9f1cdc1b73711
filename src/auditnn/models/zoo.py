"""The architecture registry: mlp, cnn and resnet18, each built for a given input shape and class count."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..errors import AuditError, allowed, option

ModelBuilder = Callable[[int, int, int, int | None], nn.Module]
MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        MODELS[name] = builder
        return builder

    return add


@register_model("mlp")
def mlp(in_channels: int, image_size: int, num_classes: int, width: int | None = None) -> nn.Module:
    """One hidden layer (default 30 units, the classic 784-30-10 digit network)."""
    hidden = width or 30
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


@register_model("cnn")
def cnn(in_channels: int, image_size: int, num_classes: int, width: int | None = None) -> nn.Module:
    """Two conv blocks with BatchNorm, then a small classifier head; `width` is the first block's channels (32)."""
    c = width or 32
    return nn.Sequential(
        nn.Conv2d(in_channels, c, 3, padding=1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * c),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4),  # a 4x4 map keeps coarse position (where the watermark sits) for any input size
        nn.Flatten(),
        nn.Linear(2 * c * 16, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@register_model("resnet18")
def resnet18(in_channels: int, image_size: int, num_classes: int, width: int | None = None) -> nn.Module:
    """torchvision's ResNet-18 adapted to small images: a 3x3 stride-1 stem and no max-pool."""
    from torchvision.models import resnet18 as tv_resnet18

    if width is not None:
        raise AuditError(f"model 'resnet18' has a fixed width; drop {option('--width', 'model.width')}")
    net = tv_resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


MAX_WIDTH = 65536  # hidden units or channels; wider layers only exhaust memory


def build_model(name: str, in_channels: int, image_size: int, num_classes: int, width: int | None = None) -> nn.Module:
    if name not in MODELS:
        raise AuditError(f"model '{name}' is unknown; allowed: {allowed(MODELS)}")
    if width is not None and not 1 <= width <= MAX_WIDTH:
        raise AuditError(f"width {width}; allowed: at least 1, at most {MAX_WIDTH}")
    if num_classes < 2:
        raise AuditError(f"K = {num_classes} classes; allowed: K >= 2")
    return MODELS[name](in_channels, image_size, num_classes, width)
