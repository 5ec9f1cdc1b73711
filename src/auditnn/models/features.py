"""What a model sees: the features one of its layers computes for each image, read by a forward hook batch by batch.

`classifier_layer` finds the layer feeding the logits (the last nn.Linear with K outputs); `embed` returns its input
(the penultimate features), or the output of any named module, for every image, streamed like inference.predictions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from ..data.stream import PixelStore, as_store, my_batches_of
from ..errors import AuditError
from ..inference import check_logits, eval_mode, model_device
from ..runtime import gather_parts

SHOWN_NAMES = 8  # layer names an error message lists (the last ones: those nearest the logits)
SUPPORTED = (
    "models built by auditnn (mlp, cnn, resnet18), torchvision names and factories whose classifier is an nn.Linear; "
    "an exported or TorchScript program hides its layers"
)


def classifier_layer(model: nn.Module, num_classes: int | None = None) -> tuple[str, nn.Linear]:
    """(name, layer) of the layer feeding the logits: the last nn.Linear (in registration order) with `num_classes`
    outputs (any count when None). AuditError when the model has none (an exported program shows no nn.Linear)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (num_classes is None or module.out_features == num_classes):
            found = (name, module)
    if found is None:
        outputs = "nn.Linear layer" if num_classes is None else f"nn.Linear layer with {num_classes} outputs"
        raise AuditError(
            f"the model has no {outputs} feeding its logits, so its penultimate features cannot be read; "
            f"allowed: {SUPPORTED} (or name a layer with --layer)"
        )
    return found


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule of the model, in registration order (the model itself, named '', left out)."""
    return [name for name, _ in model.named_modules() if name]


def named_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """(full name, module) of the submodule called `name`; a model wrapped for pixel space (PixelModel, whose
    network is `net`) also takes the network's own names ('8' for 'net.8'). AuditError naming a few allowed names."""
    modules = dict(model.named_modules())
    for candidate in (name, f"net.{name}"):
        if candidate and candidate in modules:
            return candidate, modules[candidate]
    names = layer_names(model)
    if not names:
        raise AuditError(f"layer '{name}' is not in the model, which shows no named layers; allowed: {SUPPORTED}")
    shown = names[-SHOWN_NAMES:]
    more = f" (the last {len(shown)} of {len(names)})" if len(names) > len(shown) else ""
    raise AuditError(f"layer '{name}' is not in the model; allowed: a layer name such as {', '.join(shown)}{more}")


@contextmanager
def _captured(module: nn.Module, *, inputs: bool) -> Iterator[list[torch.Tensor]]:
    """A list that receives, at each forward of `module`, its first input (inputs=True) or its output, detached."""
    seen: list[torch.Tensor] = []

    def keep(value: Any, what: str) -> None:
        if not isinstance(value, torch.Tensor):
            raise AuditError(
                f"the layer's {what} is a {type(value).__name__}; allowed: a layer whose {what} is a tensor"
            )
        seen.append(value.detach())

    if inputs:
        handle = module.register_forward_pre_hook(lambda _m, args: keep(args[0] if args else None, "input"))
    else:
        handle = module.register_forward_hook(lambda _m, _args, output: keep(output, "output"))
    try:
        yield seen
    finally:
        handle.remove()


def embed_with_logits(
    model: nn.Module,
    images: torch.Tensor | PixelStore,
    *,
    layer: str | None = None,
    batch_size: int = 256,
    device: torch.device | None = None,
    workers: int | None = None,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, logits (N, K) float32), both on the CPU, for images in [0, 1] in eval mode. layer
    None: the input of the classifier layer (classifier_layer, the penultimate features); a name: that module's
    output, flattened per image. num_classes: K, which picks the classifier layer (None: the last nn.Linear).
    Images go to `device` (default: the model's), batch_size at a time; under torchrun each process embeds its own
    batches and the parts are gathered."""
    store = as_store(images)
    device = device or model_device(model)
    module: nn.Module
    if layer is None:
        name, module = classifier_layer(model, num_classes)
        where = f"the classifier layer '{name}'"
    else:
        name, module = named_layer(model, layer)
        where = f"layer '{name}'"
    features, logits = [], []
    with torch.no_grad(), eval_mode(model), _captured(module, inputs=layer is None) as seen:
        for _, begin, end, x in my_batches_of(store, batch_size, workers=workers):
            seen.clear()
            out = model(x.to(device, non_blocking=True)).float()
            check_logits(out, end - begin)
            if len(seen) != 1:
                raise AuditError(f"{where} ran {len(seen)} times in one forward pass; allowed: a layer that runs once")
            features.append(seen[0].float().reshape(end - begin, -1).cpu())
            logits.append(out.cpu())
    gathered = gather_parts([torch.cat(features), torch.cat(logits)] if features else [])
    if not gathered:
        return torch.zeros(0, 0), torch.zeros(0, 0)
    return torch.cat(gathered[0::2]), torch.cat(gathered[1::2])


def embed(
    model: nn.Module,
    images: torch.Tensor | PixelStore,
    *,
    layer: str | None = None,
    batch_size: int = 256,
    device: torch.device | None = None,
    workers: int | None = None,
    num_classes: int | None = None,
) -> torch.Tensor:
    """The features (N, D) float32 on the CPU of embed_with_logits (layer None: the penultimate features)."""
    return embed_with_logits(
        model, images, layer=layer, batch_size=batch_size, device=device, workers=workers, num_classes=num_classes
    )[0]
