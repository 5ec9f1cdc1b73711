"""The pixel-space wrapper (normalization lives here, nowhere else) and auditnn run folders: weights + model card."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import AuditError
from ..io import atomic_torch_save, atomic_write_text, safe_torch_load
from .zoo import build_model

CARD = "model.json"
WEIGHTS = "model.pt"


class PixelModel(nn.Module):
    """Takes images (N, C, H, W) float32 in [0, 1] and returns logits (N, K); normalizes inside.

    Attacks and metrics only ever see this wrapper, so they work in pixel space whatever the network expects.
    """

    mean: torch.Tensor  # (1, C, 1, 1), pixel units
    std: torch.Tensor  # (1, C, 1, 1), pixel units, > 0

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise AuditError(f"normalization mean {list(mean)} / std {list(std)}; allowed: equal lengths, std > 0")
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, H, W) images: the normalization a trained model carries."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def save_model_dir(model: PixelModel, card: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the state_dict (weights only, no pickled code) and the model card JSON, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out / WEIGHTS, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_write_text(out / CARD, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return out


def load_model_dir(directory: str | Path) -> tuple[PixelModel, dict[str, Any]]:
    """Rebuild a model trained by auditnn from its card and weights (torch.load with weights_only=True)."""
    root = Path(directory)
    card_path = root / CARD
    if not card_path.is_file():
        raise AuditError(f"model folder '{root}' has no {CARD}; give a folder written by 'auditnn train'")
    try:
        card = json.loads(card_path.read_text())
        arch = card["architecture"]
        shape = card["input_shape"]
        model = PixelModel(
            build_model(arch["name"], shape[0], shape[1], len(card["classes"]), arch.get("width")),
            card["normalization"]["mean"],
            card["normalization"]["std"],
        )
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
        raise AuditError(
            f"model card '{card_path}' is malformed ({exc!r}); give a card written by 'auditnn train'"
        ) from None
    state = safe_torch_load(root / WEIGHTS, "model weights")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AuditError(
            f"model weights '{root / WEIGHTS}' do not fit '{arch['name']}': missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.eval()
    return model, card
