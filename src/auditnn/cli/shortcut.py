"""auditnn shortcut: plant a shortcut, train (or take) a model, report how much it relies on the shortcut."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..report.tables import report_tables
from ..report.writers import write_report
from ..runtime import environment, resolve_device
from ..shortcut.audit import ShortcutAuditConfig, run_shortcut_audit, shortcut_report
from ..io import output_folder
from ..values import parse_number_list
from . import options as o
from .common import Consoles, epoch_progress, output_dir, render_table, run_id


def shortcut(
    tag: o.Tag = "watermark",
    rho: Annotated[str, typer.Option(help="P(shortcut agrees with label) in training; a list sweeps: 0.5,0.9,0.99.")] = "0.95",
    base: o.Base = "digits",
    model: Annotated[str, typer.Option(help="Architecture to train (mlp, cnn, resnet18) or a trained model auditnn:DIR.")] = "cnn",
    data: Annotated[Optional[str], typer.Option(help="A dataset folder from 'auditnn data build' instead of building one.")] = None,
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
    rhos = parse_number_list(rho, "--rho")
    config = ShortcutAuditConfig(
        build=o.build_config(
            base=base, tag=tag, rho=rhos[0], size=size, opacity=opacity, position=position, target_class=target_class,
            seed=seed, test_per_class=test_per_class, data_root=data_root, download=download,
        ),
        rhos=rhos,
        model=model,
        width=width,
        train=o.train_config(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
        device=device,
        data_dir=data,
        attribution=attribution,
    )
    config.validate()
    resolved = resolve_device(device)
    rid = run_id("shortcut", tag)
    with output_folder(output_dir(out, rid)) as out_dir:
        if save_models and not model.startswith("auditnn:"):
            config.save_models_to = str(out_dir / "models")
        with epoch_progress(consoles, f"training {model} ({tag}, {resolved})") as update:
            result = run_shortcut_audit(config, progress=lambda r, e, n, row: update(f"rho={r:g}", e, n, row))
        report = shortcut_report(result, config, run_id=rid, environment=environment(resolved))
        write_report(report, out_dir, pictures=result.pictures)
    for table in report_tables(report):
        consoles.out.print(render_table(table))
    consoles.note(f"report written to {out_dir}/ (report.json, report.html, metrics.csv, summary.md) in {result.seconds:.1f} s")
