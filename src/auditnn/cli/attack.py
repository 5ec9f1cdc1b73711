"""auditnn attack: robust accuracy under FGSM and PGD over an eps list, or a universal adversarial patch."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..attacks.audit import AttackAuditConfig, attack_report, run_attack_audit, save_patch
from ..attacks.evaluate import AttackSpec
from ..attacks.patch import PatchConfig
from ..errors import AuditError
from ..io import staged_folder
from ..report.tables import report_tables
from ..report.writers import write_report
from ..runtime import environment, resolve_device
from ..values import parse_number, parse_number_list
from . import options as o
from .common import Consoles, epoch_progress, output_dir, render_table, run_id

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
    method: Annotated[str, typer.Option(help="fgsm, pgd or patch.")] = "pgd",
    norm: Annotated[str, typer.Option(help="linf or l2 (pgd); fgsm is linf.")] = "linf",
    eps: Annotated[Optional[str], typer.Option(help="Radii in pixel units, fractions allowed: 0,2/255,4/255,8/255.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="PGD steps (default 10) or patch optimization steps (300).")] = None,
    restarts: Annotated[int, typer.Option(help="PGD random restarts, scored per sample.")] = 1,
    step_size: Annotated[Optional[str], typer.Option(help="PGD step in pixel units (default 2.5 x eps / steps).")] = None,
    target: Annotated[Optional[str], typer.Option(help="CLASS, random or least-likely (pgd); CLASS or none (patch, default 0).")] = None,
    patch_size: Annotated[float, typer.Option(help="Patch side as a fraction of the image side, in (0, 1).")] = 0.3,
    patch_shape: Annotated[str, typer.Option(help="square or circle.")] = "square",
    sanity: Annotated[bool, typer.Option(help="Run the gradient-masking checks (FGSM at each eps, 2x steps, huge eps).")] = True,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model first (falls back with a warning).")] = False,
    model: Annotated[str, typer.Option(help="Architecture to train (cached), or a model: factory:pkg.mod:fn, torchvision:NAME, export:FILE.pt2, torchscript:FILE, auditnn:DIR.")] = "cnn",
    weights: o.Weights = None,
    mean: o.Mean = None,
    std: o.Std = None,
    data: Annotated[Optional[str], typer.Option(help="Images to attack: imagefolder:DIR, tensors:FILE, torchvision:NAME, or a folder from 'auditnn data build'.")] = None,
    strict: o.Strict = False,
    base: o.Base = "digits",
    width: o.Width = None,
    epochs: o.Epochs = 10,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 512,
    test_per_class: o.TestPerClass = 30,
    device: o.Device = "auto",
    seed: o.Seed = 0,
    data_root: o.DataRoot = None,
    download: o.Download = False,
    out: o.Out = None,
    quiet: o.Quiet = False,
) -> None:
    """Robust accuracy under FGSM or PGD at each eps (with gradient-masking flags), or a universal patch's success."""
    consoles = Consoles(quiet)
    is_patch = method == "patch"
    user = o.user_model(model, weights, mean, std)
    config = AttackAuditConfig(
        method=method,
        attack=AttackSpec(
            method=method, norm=norm, eps=parse_number_list(eps or DEFAULT_EPS.get(norm, DEFAULT_EPS["linf"]), "--eps"),
            steps=10 if steps is None else steps, restarts=restarts,
            step_size=None if step_size is None else parse_number(step_size, "--step-size"),
            target=None if is_patch else parse_target(target, None), batch_size=batch_size, seed=seed, sanity=sanity,
        ),
        patch=PatchConfig(size=patch_size, shape=patch_shape, target=parse_target(target, 0) if is_patch else 0,
                          steps=300 if steps is None else steps, seed=seed),
        base=base, data_dir=data, data_root=None if data_root is None else str(data_root), download=download,
        test_per_class=test_per_class, model=model, width=width, strict=strict,
        weights=user.weights, mean=user.mean, std=user.std,
        train=o.train_config(epochs=epochs, batch_size=64, lr=2e-3, seed=seed), device=device, seed=seed,
        compile=compile,
    )
    if is_patch and isinstance(config.patch.target, str):
        raise AuditError(f"patch target '{config.patch.target}' is not allowed; allowed: a class index or none")
    config.validate()
    resolved = resolve_device(device)
    rid = run_id("attack", method if is_patch else f"{method}-{norm}")
    out_dir = output_dir(out, rid)
    with staged_folder(out_dir) as staging:
        with epoch_progress(consoles, f"training {model} ({resolved})") as update:
            result = run_attack_audit(config, train_progress=lambda e, n, row: update("", e, n, row))
        report = attack_report(result, config, run_id=rid, environment=environment(resolved))
        if result.patch is not None:
            save_patch(result.patch, staging)
        write_report(report, staging, pictures=result.pictures)
    for table in report_tables(report):
        consoles.out.print(render_table(table))
    for warning in report.warnings:
        consoles.err.print(f"[bold yellow]warning[/] {warning['code']}: {warning['message']}")
    extra = ", patch.png, patch.pt" if result.patch is not None else ""
    consoles.note(f"report written to {out_dir}/ (report.json, report.html, metrics.csv, summary.md{extra}) "
                  f"in {result.seconds:.1f} s")
