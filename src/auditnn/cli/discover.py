"""auditnn discover: slices of the test images where a model fails, found without group labels; with
--evaluate-discovery, scored against a planted shortcut the discoverer does not see."""

from __future__ import annotations

from typing import Annotated

import typer

from ..checks.discover import DiscoverSettings, DiscoverySettings
from ..errors import AuditError
from ..plan import Check, Plan
from ..values import parse_number
from . import options as o
from .common import Consoles
from .run import run_and_render


def discover(
    model: o.TrainedOrCached = "cnn",
    weights: o.Weights = None,
    mean: o.Mean = None,
    std: o.Std = None,
    data: Annotated[
        str | None,
        typer.Option(help="Labelled images: imagefolder:DIR, tensors:FILE, torchvision:NAME, or a built dataset."),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(help="Module whose output is the embedding (default: the input of the layer feeding the logits)."),
    ] = None,
    slices: Annotated[int | None, typer.Option(help="Mixture components (default: 2 x the classes).")] = None,
    min_slice_size: Annotated[
        int | None, typer.Option(help="Images a slice needs to be judged (default: 2 % of the images, at least 5).")
    ] = None,
    grid: Annotated[
        int | None, typer.Option(help="Cells per side of the region grid (default: the first of 4, 3, 2 dividing).")
    ] = None,
    evaluate_discovery: Annotated[
        bool,
        typer.Option(
            "--evaluate-discovery",
            help="Plant --tag at --rho, train --model on it (or take a trained one), score the slices against the conflicting images.",
        ),
    ] = False,
    tag: o.Tag = "watermark",
    rho: Annotated[str, typer.Option(help="--evaluate-discovery: share of images whose shortcut agrees.")] = "0.95",
    target_class: o.TargetClass = None,
    size: o.Size = None,
    opacity: o.Opacity = None,
    position: o.Position = None,
    strict: o.Strict = False,
    base: o.Base = "digits",
    width: o.Width = None,
    epochs: o.Epochs = 10,
    batch_size: o.EvalBatchSize = None,
    max_memory: Annotated[
        str | None, typer.Option(help="Memory a batch may take, e.g. 4GB or 512MB (default: a share of the free).")
    ] = None,
    test_per_class: o.TestPerClass = 30,
    device: o.Device = "auto",
    seed: o.Seed = 0,
    data_root: o.DataRoot = None,
    download: o.Download = False,
    out: o.Out = None,
    quiet: o.Quiet = False,
) -> int:
    """Slices where the model fails without group labels: an error-aware mixture over its embeddings, ranked by
    accuracy gap, each described by its classes, exemplars, scan features and the regions the model looks at."""
    subject = o.evaluated_subject(
        model=model,
        weights=weights,
        mean=mean,
        std=std,
        base=base,
        data=data,
        data_root=data_root,
        download=download,
        test_per_class=test_per_class,
        strict=strict,
        width=width,
        epochs=epochs,
        seed=seed,
    )
    if evaluate_discovery:
        if data is not None:
            raise AuditError(
                f"--evaluate-discovery builds its data from --base, but --data '{data}' is given; allowed: one of the two"
            )
        check = Check(
            "discovery",
            None,
            DiscoverySettings(
                tag=tag,
                rho=parse_number(rho, "--rho"),
                size=size,
                opacity=opacity,
                position=position,
                target_class=target_class,
                slices=slices,
                min_slice_size=min_slice_size,
                layer=layer,
                grid=grid,
                batch_size=batch_size,
            ),
        )
    else:
        planted = {"--target-class": target_class, "--size": size, "--opacity": opacity, "--position": position}
        given = [flag for flag, value in planted.items() if value is not None]
        given += [
            flag for flag, value, default in (("--tag", tag, "watermark"), ("--rho", rho, "0.95")) if value != default
        ]
        if given:
            raise AuditError(f"{given[0]} is taken with --evaluate-discovery only; allowed: drop it, or add that flag")
        check = Check(
            "discover",
            None,
            DiscoverSettings(
                slices=slices, min_slice_size=min_slice_size, layer=layer, grid=grid, batch_size=batch_size
            ),
        )
    plan = Plan("discover", [check], subject, seed, device, max_memory=max_memory)
    return run_and_render(plan, out, Consoles(quiet), "discover")
