"""auditnn scan: how much label information the data's low-level statistics carry, region by region, before any
model is trained (no model is trained or loaded)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..checks.scan import ScanSettings
from ..errors import AuditError
from ..plan import Check, Plan
from ..spec import DataSpec, ModelSpec
from . import options as o
from .common import Consoles
from .run import run_and_render


def scan(
    data: Annotated[
        str | None,
        typer.Argument(
            help="The images: digits, shapes, imagefolder:DIR, tensors:FILE, torchvision:NAME or a folder from 'auditnn data build' (its training split). Default: --base, or with --tag, the base with that tag planted."
        ),
    ] = None,
    base: o.Base = "digits",
    tag: Annotated[
        str | None,
        typer.Option(help="Plant this tag (watermark, background, boat) on --base and scan the training split."),
    ] = None,
    rho: Annotated[float, typer.Option(help="With --tag: share of images whose tag agrees with the label.")] = 0.95,
    target_class: o.TargetClass = None,
    size: o.Size = None,
    opacity: o.Opacity = None,
    position: o.Position = None,
    grid: Annotated[int, typer.Option(help="Cells per side of the heat map (must divide the image's sides).")] = 4,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (stratified).")] = 5,
    permutations: Annotated[
        int, typer.Option(help="Label permutations of the null (at least 1/alpha: 100 at alpha 0.01).")
    ] = 199,
    alpha: Annotated[
        float, typer.Option(help="Family-wise level: a family is flagged when its adjusted p < alpha.")
    ] = 0.01,
    test_per_class: o.TestPerClass = 30,
    strict: o.Strict = False,
    seed: o.Seed = 0,
    data_root: o.DataRoot = None,
    download: o.Download = False,
    out: o.Out = None,
    quiet: o.Quiet = False,
) -> int:
    """Which low-level statistics predict the label: per grid cell, border strip, corner patch, colour histogram and
    image property, the cross-validated accuracy of a logistic regression against chance and a label-permutation
    null (family-wise adjusted p-values)."""
    if tag is None and any(v is not None for v in (target_class, size, opacity, position)):
        raise AuditError("--target-class, --size, --opacity and --position shape a planted tag; allowed: with --tag")
    if tag is not None and data is not None:
        raise AuditError(f"data '{data}' and --tag {tag} both name the images; allowed: one of them")
    settings = ScanSettings(
        grid=grid, folds=folds, permutations=permutations, alpha=alpha, tag=tag, rho=rho, size=size, opacity=opacity,
        position=position, target_class=target_class,
    )  # fmt: skip
    plan = Plan("scan", [Check("scan", None, settings)])
    plan.subject = o.subject_spec(
        model=ModelSpec("cnn"), base=base, data=data, data_root=data_root, download=download,
        test_per_class=test_per_class, strict=strict,
    )  # fmt: skip
    plan.seed = seed
    plan.device = "cpu"
    detail = tag or (DataSpec.parse(data).text if data is not None else base)
    return run_and_render(plan, out, Consoles(quiet), detail)
