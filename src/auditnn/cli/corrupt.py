"""auditnn corrupt: accuracy under the ImageNet-C corruptions at each severity, mean corruption accuracy, CE and mCE
against a baseline model's report, and the calibration error per severity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..checks.corruption import CorruptionSettings, parse_severities
from ..corruptions.base import parse_corruptions
from ..plan import Check, Plan
from . import options as o
from .common import Consoles
from .run import run_and_render


def corrupt(
    corruptions: Annotated[
        str,
        typer.Option(
            help="Comma list of corruption names, benchmark (the 15 of ImageNet-C) or all (the 15 and the 4 held out)."
        ),
    ] = "benchmark",
    severities: Annotated[str, typer.Option(help="Comma list of severities 1 to 5, e.g. 1,3,5.")] = "1,2,3,4,5",
    baseline: Annotated[
        Path | None,
        typer.Option(help="Another model's 'auditnn corrupt' report.json on the same images: adds CE and mCE."),
    ] = None,
    model: o.TrainedOrCached = "cnn",
    weights: o.Weights = None,
    mean: o.Mean = None,
    std: o.Std = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Images to corrupt: imagefolder:DIR, tensors:FILE, torchvision:NAME, or a folder from 'auditnn data build'."
        ),
    ] = None,
    strict: o.Strict = False,
    base: o.Base = "digits",
    width: o.Width = None,
    epochs: o.Epochs = 10,
    batch_size: o.EvalBatchSize = None,
    max_memory: o.MaxMemory = None,
    test_per_class: o.TestPerClass = 30,
    device: o.Device = "auto",
    seed: o.Seed = 0,
    data_root: o.DataRoot = None,
    download: o.Download = False,
    out: o.Out = None,
    quiet: o.Quiet = False,
) -> int:
    """Accuracy under natural corruptions (noise, blur, weather, digital) at each severity, with mCE against a
    baseline report and the expected calibration error per severity."""
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
    settings = CorruptionSettings(
        corruptions=parse_corruptions(corruptions),
        severities=list(parse_severities(severities)),
        baseline=None if baseline is None else str(baseline),
        batch_size=batch_size,
    )
    plan = Plan("corrupt", [Check("corruption", None, settings)], subject, seed, device, max_memory=max_memory)
    return run_and_render(plan, out, Consoles(quiet), "corruptions")
