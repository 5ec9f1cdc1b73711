"""auditnn shortcut: plant a shortcut, train (or take) a model, report how much it relies on the shortcut."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..data.controlled import ShortcutConfig, check_shortcut_matches, read_manifest
from ..errors import AuditError
from ..report.tables import report_tables
from ..report.writers import write_report
from ..runtime import environment, resolve_device
from ..shortcut.audit import ShortcutAuditConfig, run_shortcut_audit, shortcut_report
from ..shortcut.user import UserShortcutConfig, run_user_shortcut_audit, user_shortcut_report
from ..models.user import split_model_spec
from ..subject import is_source_spec
from ..io import staged_folder
from ..values import parse_number_list
from . import options as o
from .common import Consoles, epoch_progress, output_dir, render_table, run_id


def shortcut(
    tag: Annotated[Optional[str], typer.Option(help="Shortcut to plant: watermark (default), background or boat.")] = None,
    rho: Annotated[str, typer.Option(help="Share of training images whose shortcut agrees with the label (with --target-class: tagged exactly when of that class); a list sweeps: 0.5,0.9,0.99.")] = "0.95",
    base: o.Base = "digits",
    model: Annotated[str, typer.Option(help="Architecture to train (mlp, cnn, resnet18), or a trained model: auditnn:DIR, factory:pkg.mod:fn, torchvision:NAME, export:FILE.pt2, torchscript:FILE.")] = "cnn",
    weights: o.Weights = None,
    mean: o.Mean = None,
    std: o.Std = None,
    data: Annotated[Optional[str], typer.Option(help="A folder from 'auditnn data build', or your images (imagefolder:DIR, tensors:FILE, torchvision:NAME) for a trained model.")] = None,
    groups: Annotated[Optional[Path], typer.Option(help="Metadata CSV (file or index, label, attribute columns): per-group accuracy.")] = None,
    attribute: Annotated[Optional[str], typer.Option(help="The CSV column that defines the groups (with --groups).")] = None,
    associate: Annotated[Optional[str], typer.Option(help="With --groups: the class each attribute value stands for, VALUE:CLASS,... (water:waterbird,land:landbird). Without it or --associate-from, each value's majority class among the evaluated images is used, with a warning.")] = None,
    associate_from: Annotated[Optional[Path], typer.Option(help="With --groups: a training split's metadata CSV (label and attribute columns); each value's class is its majority class there.")] = None,
    strict: o.Strict = False,
    target_class: o.TargetClass = None,
    size: o.Size = None,
    opacity: o.Opacity = None,
    position: o.Position = None,
    width: o.Width = None,
    epochs: o.Epochs = 10,
    batch_size: o.BatchSize = 64,
    lr: o.LearningRate = 2e-3,
    attribution: Annotated[str, typer.Option(help="gradxinput or ig (integrated gradients).")] = "gradxinput",
    test_per_class: o.TestPerClass = 30,
    device: o.Device = "auto",
    seed: o.Seed = 0,
    data_root: o.DataRoot = None,
    download: o.Download = False,
    out: o.Out = None,
    save_models: Annotated[bool, typer.Option(help="Keep each trained model under OUT/models/.")] = True,
    quiet: o.Quiet = False,
) -> None:
    """Measure how much a model relies on a planted shortcut: group and worst-group accuracy, counterfactual flips,
    reliance and attribution inside the shortcut's pixels."""
    consoles = Consoles(quiet)
    user = o.user_model(model, weights, mean, std)
    wants_groups = any(v is not None for v in (groups, attribute, associate, associate_from))
    if wants_groups or (data is not None and is_source_spec(data)):
        if data is None or not is_source_spec(data):
            raise AuditError("auditing your own images needs --data imagefolder:DIR, tensors:FILE or torchvision:NAME")
        planted = None
        if tag is not None or groups is None:  # with --groups alone, no tag is planted
            planted = ShortcutConfig(tag=tag or "watermark", size=size, opacity=opacity, position=position,
                                     target_class=target_class)
        _user_audit(consoles, UserShortcutConfig(
            model=user, data=data, shortcut=planted, groups=None if groups is None else str(groups),
            attribute=attribute, associate=associate, associate_from=None if associate_from is None else str(associate_from),
            data_root=None if data_root is None else str(data_root), download=download,
            strict=strict, device=device, seed=seed,
        ), out)
        return
    if data is not None:  # a built dataset is used as built: its tag, not a default, names the run
        manifest = read_manifest(data)
        check_shortcut_matches(manifest, {"tag": tag, "size": size, "opacity": opacity, "position": position,
                                          "target_class": target_class}, data)
        tag = manifest["shortcut"]["tag"]
    tag = tag or "watermark"
    rhos = parse_number_list(rho, "--rho")
    config = ShortcutAuditConfig(
        build=o.build_config(
            base=base, tag=tag, rho=rhos[0], size=size, opacity=opacity, position=position, target_class=target_class,
            seed=seed, test_per_class=test_per_class, data_root=data_root, download=download,
        ),
        rhos=rhos,
        model=model,
        weights=user.weights,
        mean=user.mean,
        std=user.std,
        width=width,
        train=o.train_config(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
        device=device,
        data_dir=data,
        attribution=attribution,
    )
    config.validate()
    resolved = resolve_device(device)
    rid = run_id("shortcut", tag)
    out_dir = output_dir(out, rid)
    with staged_folder(out_dir) as staging:
        if save_models and split_model_spec(model)[0] == "arch":
            config.save_models_to = str(staging / "models")
        with epoch_progress(consoles, f"training {model} ({tag}, {resolved})") as update:
            result = run_shortcut_audit(config, progress=lambda r, e, n, row: update(f"rho={r:g}", e, n, row))
        if config.save_models_to is not None:  # the report names where the models are once the folder is in place
            config.save_models_to = str(out_dir / "models")
            for row in result.rows:
                row.model_dir = str(out_dir / Path(row.model_dir).relative_to(staging))
        report = shortcut_report(result, config, run_id=rid, environment=environment(resolved))
        write_report(report, staging, pictures=result.pictures)
    for table in report_tables(report):
        consoles.out.print(render_table(table))
    consoles.note(f"report written to {out_dir}/ (report.json, report.html, metrics.csv, summary.md) in {result.seconds:.1f} s")


def _user_audit(consoles: Consoles, config: UserShortcutConfig, out: Path | None) -> None:
    """A trained model on the user's images: planted-tag sensitivity and/or per-group accuracy."""
    config.validate()
    resolved = resolve_device(config.device)
    rid = run_id("shortcut", config.shortcut.tag if config.shortcut else f"groups-{config.attribute}")
    out_dir = output_dir(out, rid)
    with staged_folder(out_dir) as staging:
        result = run_user_shortcut_audit(config)
        report = user_shortcut_report(result, config, run_id=rid, environment=environment(resolved))
        write_report(report, staging)
    for table in report_tables(report):
        consoles.out.print(render_table(table))
    for warning in report.warnings:
        consoles.err.print(f"[bold yellow]warning[/] {escape(warning['code'])}: {escape(warning['message'])}")
    skipped = result.data.get("skipped_files")
    if skipped:
        consoles.note(f"{skipped} non-image file(s) in the folder were skipped (--strict makes them an error)")
    consoles.note(f"report written to {out_dir}/ (report.json, report.html, metrics.csv, summary.md) in {result.seconds:.1f} s")
