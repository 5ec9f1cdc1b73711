"""auditnn attack: robust accuracy under an attack (FGSM, PGD, APGD, APGD-T, FAB-T, Square) or the AutoAttack ensemble
over an eps list, or a universal adversarial patch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..checks.attack import AttackSettings
from ..checks.patch import PatchSettings
from ..errors import AuditError
from ..plan import Check, Plan
from ..values import parse_number, parse_number_list
from . import options as o
from .common import Consoles
from .run import run_and_render

DEFAULT_EPS = {"linf": "0,1/255,2/255,4/255,8/255", "l2": "0,0.25,0.5,1"}


def parse_target(text: str | None, default: int | str | None) -> int | str | None:
    """'3' -> 3, 'random' / 'least-likely' kept, 'none' -> untargeted, absent -> the method's default."""
    if text is None:
        return default
    text = text.strip().lower()
    if text == "none":
        return None
    if text in ("random", "least-likely"):
        return text
    if text.isdigit():
        return int(text)
    raise AuditError(f"target '{text}' is unknown; allowed: a class index, random, least-likely or none")


def attack(
    method: Annotated[
        str, typer.Option(help="fgsm, pgd, apgd, apgd-t, fab, square, autoattack (the ensemble) or patch.")
    ] = "pgd",
    norm: Annotated[str, typer.Option(help="linf or l2 (fgsm is linf only).")] = "linf",
    eps: Annotated[
        str | None, typer.Option(help="Radii in pixel units, fractions allowed: 0,2/255,4/255,8/255.")
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="Steps: the method's own default when not given (PGD 10, APGD and FAB 100, patch 300)."),
    ] = None,
    restarts: Annotated[
        int, typer.Option(help="Random restarts of pgd, apgd, apgd-t, fab, square, scored per sample.")
    ] = 1,
    step_size: Annotated[str | None, typer.Option(help="PGD step in pixel units (default 2.5 x eps / steps).")] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="CLASS, random or least-likely (fgsm, pgd, apgd, fab, square); CLASS or none (patch, default 0)."
        ),
    ] = None,
    version: Annotated[
        str, typer.Option(help="autoattack: standard (APGD-CE, APGD-T, FAB-T, Square), plus or rand.")
    ] = "standard",
    target_classes: Annotated[
        int | None,
        typer.Option(
            help="apgd-t, fab, autoattack: how many of the top other classes each point is pushed to (9, at most K-1)."
        ),
    ] = None,
    queries: Annotated[int, typer.Option(help="square, autoattack: model evaluations per point.")] = 5000,
    loss: Annotated[str, typer.Option(help="apgd: ce (cross-entropy) or dlr (difference of logits ratio).")] = "ce",
    patch_size: Annotated[float, typer.Option(help="Patch side as a fraction of the image side, in (0, 1).")] = 0.3,
    patch_shape: Annotated[str, typer.Option(help="square or circle.")] = "square",
    sanity: Annotated[
        bool, typer.Option(help="Run the gradient-masking checks (FGSM at each eps, 2x steps, huge eps).")
    ] = True,
    compile: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model first (falls back with a warning).")
    ] = False,
    model: o.TrainedOrCached = "cnn",
    weights: o.Weights = None,
    mean: o.Mean = None,
    std: o.Std = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Images to attack: imagefolder:DIR, tensors:FILE, torchvision:NAME, or a folder from 'auditnn data build'."
        ),
    ] = None,
    strict: o.Strict = False,
    base: o.Base = "digits",
    width: o.Width = None,
    epochs: o.Epochs = 10,
    batch_size: o.EvalBatchSize = None,
    max_memory: o.MaxMemory = None,
    save_adversarial: Annotated[
        Path | None,
        typer.Option(help="Write every batch's adversarial images at each eps to this new folder (batch-NNNNNN.pt)."),
    ] = None,
    test_per_class: o.TestPerClass = 30,
    device: o.Device = "auto",
    seed: o.Seed = 0,
    data_root: o.DataRoot = None,
    download: o.Download = False,
    out: o.Out = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue an interrupted run into --out from the batches it finished (fgsm, pgd, apgd...)."),
    ] = False,
    quiet: o.Quiet = False,
) -> int:
    """Robust accuracy under an attack (FGSM, PGD, APGD, APGD-T, FAB-T, Square) or the AutoAttack ensemble at each eps
    (with gradient-masking flags), or a universal patch's success."""
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
    if method == "patch":
        given = {
            "--batch-size": batch_size is not None,
            "--save-adversarial": save_adversarial is not None,
            "--version": version != "standard",
            "--target-classes": target_classes is not None,
            "--queries": queries != 5000,
            "--loss": loss != "ce",
        }
        unused = [flag for flag, set_ in given.items() if set_]
        if unused:
            raise AuditError(
                f"{unused[0]} is not taken by method patch (it fits one patch on every training image at once); "
                "allowed: drop it, or another method"
            )
        patch_target = parse_target(target, 0)
        if isinstance(patch_target, str):
            raise AuditError(f"patch target '{patch_target}' is not allowed; allowed: a class index or none")
        check = Check(
            "patch",
            None,
            PatchSettings(
                size=patch_size, shape=patch_shape, target=patch_target, steps=300 if steps is None else steps
            ),
        )
    else:
        check = Check(
            "attack",
            None,
            AttackSettings(
                eps=parse_number_list(eps or DEFAULT_EPS.get(norm, DEFAULT_EPS["linf"]), "--eps"),
                method=method,
                norm=norm,
                steps=steps,
                restarts=restarts,
                target=parse_target(target, None),
                step_size=None if step_size is None else parse_number(step_size, "--step-size"),
                sanity=sanity,
                version=version,
                target_classes=target_classes,
                queries=queries,
                loss=loss,
                batch_size=batch_size,
                compile=compile,
                save_adversarial=None if save_adversarial is None else str(save_adversarial),
            ),
        )
    if save_adversarial is not None and out is not None:
        saved, report = save_adversarial.resolve(), out.resolve()
        if saved == report or report in saved.parents or saved in report.parents:
            raise AuditError(
                f"--save-adversarial '{save_adversarial}' and --out '{out}' overlap (the report folder is replaced "
                "as a whole when the run ends); allowed: two separate folders"
            )
    if resume and save_adversarial is not None:
        raise AuditError(
            "--resume with --save-adversarial: the batches done before the interruption were saved then, and a "
            "resumed run would not write them again; allowed: one of the two"
        )
    plan = Plan("attack", [check], subject, seed, device, max_memory=max_memory)
    detail = method if method == "patch" else f"{method}-{norm}"
    return run_and_render(plan, out, Consoles(quiet), detail, resume=resume)
