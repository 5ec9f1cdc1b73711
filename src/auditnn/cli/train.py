"""auditnn train: fit a registered architecture on a controlled dataset; save weights and a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..data.controlled import load_controlled
from ..io import staged_folder
from ..models import save_model_dir
from ..runtime import resolve_device
from ..train import train_on_controlled
from . import options as o
from .common import Consoles, epoch_progress


def train(
    data: Annotated[Path, typer.Option(help="A dataset folder from 'auditnn data build'.")],
    out: Annotated[Path, typer.Option(help="Folder for model.pt (state_dict) and model.json (model card).")],
    model: Annotated[str, typer.Option(help="Architecture: mlp, cnn or resnet18.")] = "cnn",
    width: o.Width = None,
    epochs: o.Epochs = 10,
    batch_size: o.BatchSize = 64,
    lr: o.LearningRate = 2e-3,
    device: o.Device = "auto",
    seed: o.Seed = 0,
    quiet: o.Quiet = False,
) -> None:
    """Train a model; the folder it writes is a model spec for other commands: --model auditnn:OUT."""
    consoles = Consoles(quiet)
    config = o.train_config(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    resolved = resolve_device(device)
    dataset = load_controlled(data)
    with staged_folder(out, "model folder") as staging, epoch_progress(consoles, "training") as update:
        net, result, card = train_on_controlled(
            dataset, model, config, resolved, width=width, progress=lambda e, n, row: update(model, e, n, row)
        )
        save_model_dir(net, card, staging)
    last = result.history[-1]
    consoles.out.print(
        f"model written to {out}/: train acc {last['train_accuracy']:.3f}, val acc {last.get('val_accuracy', float('nan')):.3f}, "
        f"{result.images_per_second:,.0f} images/s on {resolved}; use --model auditnn:{out}",
        markup=False,
    )
