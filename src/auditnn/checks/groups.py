"""Per-group accuracy for an annotated attribute of the user's images (label x attribute value); with mitigation
"dfr", the same before and after Deep Feature Reweighting retrained the model's last layer on a held-out,
group-balanced part of the annotated images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import AuditError, allowed, option
from ..inference import predictions
from ..models.load import PixelModel
from ..models.user import _ExitGuard  # a wrapper of the user's network, named to leave it out of layer names
from ..report.schema import ANY, BATCH, DATA, INT, NUM, NUM_OR_NULL, STR, metric_row
from ..report.tables import Table, fmt
from ..runtime import share_weights_from_first
from ..shortcut.annotated import (
    AnnotatedMetrics,
    Annotations,
    Association,
    annotated_metrics,
    load_association,
    read_groups,
)
from ..shortcut.dfr import MIN_PER_GROUP, DFRResult, retrain_last_layer
from ..subject import Subject, SubjectSpec
from ..tensorfile import write_tensors
from .base import CheckKind, CheckResult, Context, batch_size_for, of_check, path_setting, register


@dataclass
class GroupsSettings:
    """groups: a metadata CSV (file or index, label, attribute columns); attribute: the column to group by;
    associate: VALUE:CLASS,... the class each value stands for; associate_from: a training split's metadata CSV
    whose majority class per value is used (neither: the majority among the evaluated images, with a warning);
    mitigation: None, or "dfr" to retrain the model's last layer on a group-balanced part of the annotated images
    (Deep Feature Reweighting) and report before/after on the rest, the thresholds judging the retrained rows;
    holdout: the share of each group's images set aside for that retraining (never scored)."""

    groups: str = field(metadata=path_setting())
    attribute: str
    associate: str | None = None
    associate_from: str | None = field(default=None, metadata=path_setting())
    mitigation: str | None = None
    holdout: float = 0.5


MITIGATIONS = ("dfr",)
LAYER_FILE = "last_layer.safetensors"
SCALARS = ("accuracy", "worst_group_accuracy", "aligned_accuracy", "conflicting_accuracy", "gap", "agreement_rate")
GROUPS_SCHEMA = [{"group": STR, "n": INT, "accuracy": NUM_OR_NULL}]


def groups_rows(a: AnnotatedMetrics, method: str | None = None) -> list[dict[str, Any]]:
    """The metric rows of one measurement; `method` (erm, dfr) labels each row when a mitigation ran."""
    rows = [metric_row("groups", name, getattr(a, name), attribute=a.attribute, method=method) for name in SCALARS]
    rows += [
        metric_row("groups", "group_accuracy", g["accuracy"], group=g["group"], attribute=a.attribute, method=method)
        for g in a.groups
    ]
    return rows


@dataclass
class HoldoutSplit:
    """The annotated images' groups (label x attribute value, those present) and which images retrain the last
    layer. groups: (N,) int64 group index per image, -1 for images without annotation; names: each group's name
    ('class x value'); retrain: indices of the images set aside to retrain on; scored: the others, in order."""

    groups: torch.Tensor
    names: list[str]
    retrain: torch.Tensor
    scored: torch.Tensor


def retraining_share(n: int, holdout: float) -> int:
    """Images of a group of n set aside to retrain on: floor(holdout * n)."""
    return int(holdout * n)


def needed_images(holdout: float) -> int:
    """The smallest group that leaves MIN_PER_GROUP images to retrain on and one to score at this holdout."""
    n = MIN_PER_GROUP + 1
    while retraining_share(n, holdout) < MIN_PER_GROUP or n - retraining_share(n, holdout) < 1:
        n += 1
    return n


def holdout_split(
    labels: torch.Tensor, notes: Annotations, classes: list[str], holdout: float, seed: int
) -> HoldoutSplit:
    """Each (label x value) group's images in a seeded random order, the first floor(holdout * n) set aside to
    retrain on; AuditError naming a group whose count leaves fewer than MIN_PER_GROUP to retrain on or none to
    score."""
    k = len(classes)
    combined = torch.where(notes.codes >= 0, notes.codes * k + labels, torch.full_like(labels, -1))
    present = sorted(set(combined[combined >= 0].tolist()))
    if not present:
        raise AuditError(f"no image of the data is annotated with {notes.attribute!r}")
    groups = torch.full_like(labels, -1)
    for g, c in enumerate(present):
        groups[combined == c] = g
    names = [f"{classes[c % k]} x {notes.values[c // k]}" for c in present]
    generator = torch.Generator().manual_seed(seed)
    retrain = []
    for g, name in enumerate(names):
        members = torch.nonzero(groups == g).view(-1)
        n, share = len(members), retraining_share(len(members), holdout)
        if share < MIN_PER_GROUP or n - share < 1:
            raise AuditError(
                f"group '{name}' has {n} annotated image{'s' if n != 1 else ''}; mitigation dfr sets {holdout:g} of "
                f"each group aside to retrain on ({share} here) and scores the rest ({n - share}), and needs at least "
                f"{MIN_PER_GROUP} to retrain on and 1 to score, so {needed_images(holdout)} images per group at this "
                "holdout: give more annotated images or another holdout"
            )
        retrain.append(members[torch.randperm(n, generator=generator)[:share]])
    chosen = torch.cat(retrain).sort().values
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[chosen] = False
    return HoldoutSplit(groups, names, chosen, torch.nonzero(kept).view(-1))


def layer_key(model: nn.Module, name: str) -> str:
    """The retrained layer's name as the user's network calls it: the wrappers auditnn puts around it (pixel space,
    a factory's exit guard), each holding it as 'net', left out."""
    while isinstance(model, (PixelModel, _ExitGuard)) and name.startswith("net."):
        model, name = model.net, name.removeprefix("net.")
    return name


def layer_writer(model: nn.Module, new_model: nn.Module, result: DFRResult, attribute: str) -> Callable[[Path], Any]:
    """A function writing the new last layer as safetensors: '<layer>.weight' and '<layer>.bias', the names the
    user's network gives them (load_state_dict(..., strict=False) takes them), with what made them as metadata."""
    key = layer_key(model, result.layer)
    prefix = f"{key}." if key else ""
    layer = new_model.get_submodule(result.layer)
    assert isinstance(layer, nn.Linear)  # retrain_last_layer put it there
    tensors = {f"{prefix}weight": layer.weight.detach().cpu(), f"{prefix}bias": layer.bias.detach().cpu()}
    metadata = {"layer": key, "method": "dfr", "attribute": attribute, "l1": f"{result.l1:g}"}
    return lambda path: write_tensors(path, tensors, metadata)


@register
class Groups(CheckKind[GroupsSettings]):
    name = "groups"
    settings = GroupsSettings
    thresholds = {
        "min_worst_group_accuracy": ("worst_group_accuracy", "min"),
        "max_gap": ("gap", "max"),
        "max_agreement_rate": ("agreement_rate", "max"),
    }
    section_schema = {
        "attribute": STR,
        "n": INT,
        "model": STR,
        "data?": DATA,
        "check?": STR,
        "batch?": BATCH,
        "worst_group": STR,
        "associated_class": {"*": STR},
        "association_source?": STR,
        "groups": GROUPS_SCHEMA,
        **{k: NUM_OR_NULL for k in SCALARS},
        "mitigation?": {
            "method": STR,
            "holdout": NUM,
            "retrained_on": INT,
            "scored": INT,
            "layer": STR,
            "retraining": ANY,
            "before": {"groups": GROUPS_SCHEMA, "worst_group": STR, **{k: NUM_OR_NULL for k in SCALARS}},
        },
    }

    def validate(self, settings: GroupsSettings, spec: SubjectSpec) -> None:
        if settings.mitigation is not None and settings.mitigation not in MITIGATIONS:
            raise AuditError(
                f"{option('--mitigate', 'mitigation')} '{settings.mitigation}' is not one for your own model; "
                f"allowed: {allowed(MITIGATIONS)}"
            )
        if not 0 < settings.holdout < 1:
            raise AuditError(f"holdout {settings.holdout:g}; allowed: a share of each group between 0 and 1")
        if settings.mitigation is None and settings.holdout != self.defaults()["holdout"]:
            raise AuditError(
                f"holdout {settings.holdout:g} applies to mitigation = 'dfr'; allowed: leave it out or add the mitigation"
            )

    def title(self, settings: GroupsSettings) -> tuple[str, tuple[str, ...]]:
        return f"groups by {settings.attribute}", ("attribute", "groups")

    def labels(self, settings: GroupsSettings) -> dict[str, Any]:
        """The rows the thresholds judge: with a mitigation, its rows (method = dfr)."""
        method = {} if settings.mitigation is None else {"method": settings.mitigation}
        return {"attribute": settings.attribute, **method}

    def measure(self, settings: GroupsSettings, ctx: Context) -> CheckResult:
        subject = ctx.subject
        assert subject is not None  # needs_subject: the runner resolved it
        data = subject.data
        notes = read_groups(settings.groups, settings.attribute, data.test_labels, data.classes, data.test_names)
        association = load_association(notes, data.classes, settings.associate, settings.associate_from)
        batch = batch_size_for(ctx, None)
        if settings.mitigation is not None:
            return self._mitigated(settings, ctx, subject, notes, association, batch)
        predicted = predictions(subject.model, data.test, batch_size=batch["size"])
        measured = annotated_metrics(predicted, data.test_labels, notes, data.classes, association=association)
        section = {**measured.to_dict(), "model": subject.source, "data": subject.described, "batch": batch}
        return CheckResult(groups_rows(measured), section, warnings=list(measured.warnings))

    def _mitigated(
        self,
        settings: GroupsSettings,
        ctx: Context,
        subject: Subject,
        notes: Annotations,
        association: Association | None,
        batch: dict[str, Any],
    ) -> CheckResult:
        """Retrain the last layer with DFR on a held-out part of each group; measure the model before (erm) and
        after (dfr) on the same remaining images."""
        data = subject.data
        split = holdout_split(data.test_labels, notes, data.classes, settings.holdout, ctx.seed)
        new_model, retraining = retrain_last_layer(
            subject.model,
            data.test.subset(split.retrain),
            data.test_labels[split.retrain],
            split.groups[split.retrain],
            num_classes=len(data.classes),
            seed=ctx.seed,
            batch_size=batch["size"],
            device=ctx.device,
            group_names=split.names,
        )
        share_weights_from_first(new_model)
        scored_notes = Annotations(notes.attribute, notes.values, notes.codes[split.scored], notes.n_rows)
        scored_images, scored_labels = data.test.subset(split.scored), data.test_labels[split.scored]
        measured = {}
        for method, model in (("erm", subject.model), ("dfr", new_model)):
            predicted = predictions(model, scored_images, batch_size=batch["size"])
            measured[method] = annotated_metrics(
                predicted, scored_labels, scored_notes, data.classes, association=association
            )
        before, after = measured["erm"], measured["dfr"]
        files = {LAYER_FILE: layer_writer(subject.model, new_model, retraining, settings.attribute)}
        layer = layer_key(subject.model, retraining.layer)
        mitigation = {
            "method": "dfr",
            "holdout": settings.holdout,
            "retrained_on": len(split.retrain),
            "scored": int(after.n),
            "retraining": retraining.to_dict(),
            "before": {k: v for k, v in before.to_dict().items() if k in ("groups", "worst_group", *SCALARS)},
            "layer": layer,
        }
        section = {
            **after.to_dict(),
            "model": subject.source,
            "data": subject.described,
            "batch": batch,
            "mitigation": mitigation,
        }
        warnings = _unique(before.warnings + after.warnings + _convergence(retraining, layer))
        rows = groups_rows(before, "erm") + groups_rows(after, "dfr")
        return CheckResult(rows, section, warnings=warnings, files=files)

    def tables(self, section: dict[str, Any]) -> list[Table]:
        if "mitigation" in section:
            return _mitigation_tables(section)
        summary = [
            ["accuracy", fmt(section["accuracy"])],
            ["worst-group accuracy", f"{fmt(section['worst_group_accuracy'])} ({section['worst_group']})"],
            ["accuracy, label = attribute's class", fmt(section["aligned_accuracy"])],
            ["accuracy, label != attribute's class", fmt(section["conflicting_accuracy"])],
            ["gap", fmt(section["gap"])],
            ["answers agreeing with the attribute's class", fmt(section["agreement_rate"])],
            ["attribute's class", ", ".join(f"{k}: {v}" for k, v in section["associated_class"].items())],
        ]
        groups = [
            [g["group"], str(g["n"]), fmt(g["accuracy"])]
            for g in sorted(section["groups"], key=lambda g: g["accuracy"])
        ]
        title = (
            f"Groups by '{section['attribute']}' ({section['n']} annotated images, model {section['model']})"
            f"{of_check(section)}"
        )
        return [
            Table(title, ["metric", "value"], summary),
            Table("Accuracy per group (label x attribute)", ["group", "n", "accuracy"], groups),
        ]


def _unique(warnings: list[dict[str, str]]) -> list[dict[str, str]]:
    """Warnings in order, each once (before and after share the association's)."""
    seen, kept = set(), []
    for w in warnings:
        if (w["code"], w["message"]) not in seen:
            seen.add((w["code"], w["message"]))
            kept.append(w)
    return kept


def _convergence(result: DFRResult, layer: str) -> list[dict[str, str]]:
    if result.converged:
        return []
    return [
        {
            "code": "dfr_not_converged",
            "message": (
                f"a retraining fit of layer '{layer}' stopped before it converged (l1 {result.l1:g}); "
                "the retrained layer may be short of its optimum"
            ),
        }
    ]


def _mitigation_tables(section: dict[str, Any]) -> list[Table]:
    """Before (erm) and after (dfr), on the same scored images, and how the layer was retrained."""
    before, mitigation = section["mitigation"]["before"], section["mitigation"]
    retraining = mitigation["retraining"]
    summary = [
        ["accuracy", fmt(before["accuracy"]), fmt(section["accuracy"])],
        [
            "worst-group accuracy",
            f"{fmt(before['worst_group_accuracy'])} ({before['worst_group']})",
            f"{fmt(section['worst_group_accuracy'])} ({section['worst_group']})",
        ],
        ["accuracy, label = attribute's class", fmt(before["aligned_accuracy"]), fmt(section["aligned_accuracy"])],
        [
            "accuracy, label != attribute's class",
            fmt(before["conflicting_accuracy"]),
            fmt(section["conflicting_accuracy"]),
        ],
        ["gap", fmt(before["gap"]), fmt(section["gap"])],
        ["answers agreeing with the attribute's class", fmt(before["agreement_rate"]), fmt(section["agreement_rate"])],
    ]
    was = {g["group"]: g["accuracy"] for g in before["groups"]}
    groups = [
        [g["group"], str(g["n"]), fmt(was.get(g["group"])), fmt(g["accuracy"])]
        for g in sorted(section["groups"], key=lambda g: g["accuracy"])
    ]
    how = [
        [
            "images set aside to retrain on",
            f"{mitigation['retrained_on']} ({fmt(mitigation['holdout'], 2)} of each group)",
        ],
        ["images scored (both columns)", str(mitigation["scored"])],
        ["balanced subsample", f"{retraining['per_group']} per group x {retraining['groups']} groups"],
        ["fits averaged", str(retraining["ensemble"])],
        ["l1 chosen (1 / sklearn C)", f"{retraining['l1']:g}"],
        ["retrained layer", mitigation["layer"]],
    ] + [
        [f"tuning: l1 {row['l1']:g}", f"worst group {fmt(row['worst_group_accuracy'])}"] for row in retraining["tuning"]
    ]
    title = (
        f"Groups by '{section['attribute']}' before and after DFR ({section['n']} annotated images scored, model "
        f"{section['model']}){of_check(section)}"
    )
    return [
        Table(title, ["metric", "erm", "dfr"], summary),
        Table("Accuracy per group (label x attribute)", ["group", "n", "erm", "dfr"], groups),
        Table("Last layer retrained (Deep Feature Reweighting)", ["step", "value"], how),
    ]
