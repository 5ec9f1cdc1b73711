"""auditnn shortcut: plant a shortcut, train (or take) a model, report how much it relies on the shortcut."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..checks.groups import GroupsSettings
from ..checks.sensitivity import SensitivitySettings
from ..checks.shortcut import ShortcutSettings
from ..data.controlled import check_shortcut_matches, read_manifest
from ..errors import AuditError
from ..plan import Check, Plan
from ..shortcut.mitigate import METHODS, MitigationConfig, parse_methods
from ..spec import DataSpec, ModelSpec
from ..values import parse_number_list
from . import options as o
from .common import Consoles
from .run import run_and_render


def shortcut(
    tag: Annotated[str | None, typer.Option(help="Shortcut to plant: watermark (default), background or boat.")] = None,
    rho: Annotated[
        str,
        typer.Option(
            help="Share of training images whose shortcut agrees with the label (with --target-class: tagged exactly when of that class); a list sweeps: 0.5,0.9,0.99."
        ),
    ] = "0.95",
    base: o.Base = "digits",
    model: Annotated[
        str,
        typer.Option(
            help="Architecture to train (mlp, cnn, resnet18), or a trained model: auditnn:DIR, factory:pkg.mod:fn, torchvision:NAME, export:FILE.pt2, torchscript:FILE."
        ),
    ] = "cnn",
    weights: o.Weights = None,
    mean: o.Mean = None,
    std: o.Std = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="A folder from 'auditnn data build', or your images (imagefolder:DIR, tensors:FILE, torchvision:NAME) for a trained model."
        ),
    ] = None,
    groups: Annotated[
        Path | None, typer.Option(help="Metadata CSV (file or index, label, attribute columns): per-group accuracy.")
    ] = None,
    attribute: Annotated[
        str | None, typer.Option(help="The CSV column that defines the groups (with --groups).")
    ] = None,
    associate: Annotated[
        str | None,
        typer.Option(
            help="With --groups: the class each attribute value stands for, VALUE:CLASS,... (water:waterbird,land:landbird). Without it or --associate-from, each value's majority class among the evaluated images is used, with a warning."
        ),
    ] = None,
    associate_from: Annotated[
        Path | None,
        typer.Option(
            help="With --groups: a training split's metadata CSV (label and attribute columns); each value's class is its majority class there."
        ),
    ] = None,
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
    mitigate: Annotated[
        str | None,
        typer.Option(
            help="Remedies to train on the same data and compare, one column each: a comma list of erm (plain training), reweight, groupdro, jtt, dfr. With your images (--groups): dfr only."
        ),
    ] = None,
    upweight: Annotated[
        float, typer.Option(help="JTT: the loss weight of the first pass's training errors (>= 1).")
    ] = 20.0,
    jtt_epochs: Annotated[int, typer.Option(help="JTT: epochs of the first (ERM) pass.")] = 2,
    groupdro_eta: Annotated[float, typer.Option(help="Group DRO: step size of the group weights.")] = 0.01,
    groupdro_adjustment: Annotated[
        float, typer.Option(help="Group DRO: generalization adjustment C (C / sqrt(group size) added to its loss).")
    ] = 0.0,
    quiet: o.Quiet = False,
) -> int:
    """Measure how much a model relies on a planted shortcut: group and worst-group accuracy, counterfactual flips,
    reliance and attribution inside the shortcut's pixels."""
    spec = o.user_model(model, weights, mean, std)
    train = o.train_config(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    wants_groups = any(v is not None for v in (groups, attribute, associate, associate_from))
    look = {"size": size, "opacity": opacity, "position": position, "target_class": target_class}
    methods = [] if mitigate is None else parse_methods(mitigate)
    mitigation = MitigationConfig(upweight, jtt_epochs, groupdro_eta, groupdro_adjustment)
    mitigation.validate()
    if wants_groups or (data is not None and DataSpec.parse(data).is_source):
        unused = {
            "--rho": (rho, "0.95"),
            "--attribution": (attribution, "gradxinput"),
            "--base": (base, "digits"),
            "--test-per-class": (test_per_class, 30),
            "--width": (width, None),
            "--epochs": (epochs, 10),
            "--batch-size": (batch_size, 64),
            "--lr": (lr, 2e-3),
            # the mitigation methods that take these train from scratch, on planted data only
            "--upweight": (upweight, MitigationConfig().upweight),
            "--jtt-epochs": (jtt_epochs, MitigationConfig().jtt_epochs),
            "--groupdro-eta": (groupdro_eta, MitigationConfig().groupdro_eta),
            "--groupdro-adjustment": (groupdro_adjustment, MitigationConfig().groupdro_adjustment),
        }
        plan, detail = _your_images_plan(
            spec, data, tag, groups, attribute, associate, associate_from, look, unused, methods
        )
        plan.subject = o.subject_spec(model=spec, data=data, data_root=data_root, download=download, strict=strict)
    else:
        plan, detail = _planted_plan(spec, data, tag, rho, look, attribution, save_models, methods, mitigation)
        plan.subject = o.subject_spec(
            model=spec,
            base=base,
            data_root=data_root,
            download=download,
            test_per_class=test_per_class,
            width=width,
            train=train,
        )
    plan.seed, plan.device = seed, device
    return run_and_render(plan, out, Consoles(quiet), detail)


def _planted_plan(
    spec: ModelSpec,
    data: str | None,
    tag: str | None,
    rho: str,
    look: dict[str, Any],
    attribution: str,
    save_models: bool,
    methods: list[str],
    mitigation: MitigationConfig,
) -> tuple[Plan, str]:
    """Plant a shortcut (or use a built dataset as built), train or take the model, measure reliance. Returns the
    plan (its subject still to set) and the run's name."""
    if data is not None:  # a built dataset is used as built: its tag, not a default, names the run
        manifest = read_manifest(data)
        check_shortcut_matches(manifest, {"tag": tag, **look}, data)
        tag = manifest["shortcut"]["tag"]
    tag = tag or "watermark"
    settings = ShortcutSettings(
        tag=tag,
        rho=parse_number_list(rho, "--rho"),
        **look,
        attribution=attribution,
        data=data,
        save_models=save_models and spec.is_architecture,
        mitigation=methods,
        upweight=mitigation.upweight,
        jtt_epochs=mitigation.jtt_epochs,
        groupdro_eta=mitigation.groupdro_eta,
        groupdro_adjustment=mitigation.groupdro_adjustment,
    )
    return Plan("shortcut", [Check("shortcut", None, settings)]), tag


def _refuse_planted_shortcut_options(
    given: dict[str, tuple[object, object]], applies_to: str = "a shortcut planted in a built dataset"
) -> None:
    """Options a trained model on your images does not use: set, they are refused, never silently ignored.
    given: flag -> (value, default)."""
    for flag, (value, default) in given.items():
        if value != default:
            raise AuditError(
                f"{flag} {value} applies to {applies_to}, which this audit of your images does not "
                f"have; allowed: leave {flag} out"
            )


def _your_images_plan(
    spec: ModelSpec,
    data: str | None,
    tag: str | None,
    groups: Path | None,
    attribute: str | None,
    associate: str | None,
    associate_from: Path | None,
    look: dict[str, Any],
    unused: dict[str, tuple[object, object]],
    methods: list[str],
) -> tuple[Plan, str]:
    """A trained model on the user's images: planted-tag sensitivity (--tag, the default without --groups) and/or
    per-group accuracy (--groups with --attribute). Returns the plan (its subject still to set) and the run's name."""
    if data is None or not DataSpec.parse(data).is_source:
        raise AuditError("auditing your own images needs --data imagefolder:DIR, tensors:FILE or torchvision:NAME")
    if spec.is_architecture:
        raise AuditError(
            f"model '{spec.text}' is an architecture; auditing your images needs a trained model "
            "(factory:, torchvision:, export:, torchscript: or auditnn:)"
        )
    if (groups is None) != (attribute is None):
        raise AuditError("--groups and --attribute go together: the CSV and the column to group by")
    if (associate is not None or associate_from is not None) and groups is None:
        raise AuditError(
            "--associate and --associate-from say which class each attribute value stands for; "
            "they need --groups and --attribute"
        )
    _refuse_planted_shortcut_options(unused)
    _your_images_methods(methods, groups)
    planting = tag is not None or groups is None  # with --groups alone, no tag is planted
    if not planting:  # the tag's look has nothing to apply to
        flags = {"size": "--size", "opacity": "--opacity", "position": "--position", "target_class": "--target-class"}
        _refuse_planted_shortcut_options({flags[k]: (v, None) for k, v in look.items()}, "a planted tag (--tag)")
    checks = []
    if planting:
        checks.append(Check("sensitivity", None, SensitivitySettings(tag=tag or "watermark", **look)))
    if groups is not None and attribute is not None:
        checks.append(
            Check(
                "groups",
                None,
                GroupsSettings(
                    groups=str(groups),
                    attribute=attribute,
                    associate=associate,
                    associate_from=None if associate_from is None else str(associate_from),
                    mitigation=methods[0] if methods else None,
                ),
            )
        )
    detail = tag if tag is not None or groups is None else f"groups-{attribute}"
    return Plan("shortcut", checks), detail or "watermark"


def _your_images_methods(methods: list[str], groups: Path | None) -> None:
    """On your images a trained model is given: no remedy that trains one from scratch, and dfr needs groups."""
    for method in methods:
        if method != "dfr":
            why = "needs group labels in training" if METHODS[method].needs_groups else "trains a model from scratch"
            raise AuditError(
                f"--mitigate {method} {why} on planted data; allowed with your images: dfr (with --groups)"
            )
        if groups is None:
            raise AuditError(
                "--mitigate dfr balances the groups of your images, and they have none (no --groups); "
                "allowed: --groups meta.csv --attribute COLUMN"
            )
