"""Mitigation: the standard remedies for a shortcut, each trained on the same controlled dataset, split and seed, so
that their reliance can be compared column by column.

erm: plain training (what `auditnn shortcut` trains without --mitigate). reweight: every training image's loss
weighted so that each label x shortcut group weighs the same (Sagawa et al. 2020's reweighting). groupdro: online
group DRO over those groups (Sagawa et al. 2020). jtt: Just Train Twice (Liu et al. 2021): ERM for a few epochs,
then a fresh model trained with the first one's training errors upweighted; no group labels. dfr: Deep Feature
Reweighting (Kirichenko et al. 2022): the ERM model's last layer retrained on a small group-balanced held-out set
(shortcut/dfr.py): on planted data the validation images planted again at rho 1/2 (checks/shortcut.py
balanced_held_out), on a built dataset folder its validation split as it is.

Groups are label x shortcut variant, as shortcut/metrics.py names them: group = label * V + variant, where V = K
and the variant is the shortcut id (0 .. K-1), or, with a target class, V = 2 and the variant is 0 untagged, 1
tagged.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..data.controlled import ControlledDataset, Split, aligned_with_label
from ..errors import AuditError, allowed
from ..inference import predict
from ..models import PixelModel
from ..runtime import share_weights_from_first
from ..train import GroupDRO, ProgressFn, TrainConfig, train_on_controlled


@dataclass(frozen=True)
class Method:
    """One remedy. needs_groups: it reads group labels (in training, or in the held-out split it retrains on)."""

    name: str
    needs_groups: bool
    summary: str


METHODS: dict[str, Method] = {}


def _register(method: Method) -> None:
    if method.name in METHODS:
        raise ValueError(f"mitigation '{method.name}' is registered twice")
    METHODS[method.name] = method


for _method in (
    Method("erm", False, "plain training (empirical risk minimization)"),
    Method("reweight", True, "loss weights that give every label x shortcut group the same total weight"),
    Method("groupdro", True, "online group DRO over the label x shortcut groups (Sagawa et al. 2020)"),
    Method(
        "jtt", False, "ERM for a few epochs, then a fresh model with its training errors upweighted (Liu et al. 2021)"
    ),
    Method("dfr", True, "the ERM model's last layer retrained on a small group-balanced held-out set"),
):
    _register(_method)


@dataclass
class MitigationConfig:
    """upweight: JTT's weight of the first pass's training errors (>= 1; the others weigh 1); jtt_epochs: epochs of
    JTT's first (ERM) pass; groupdro_eta: group DRO's step size of the group weights q; groupdro_adjustment: C, the
    generalization adjustment C / sqrt(n_g) added to a group's loss in q's update. Defaults: the papers' code."""

    upweight: float = 20.0
    jtt_epochs: int = 2
    groupdro_eta: float = 0.01
    groupdro_adjustment: float = 0.0

    def validate(self) -> None:
        if not (math.isfinite(self.upweight) and self.upweight >= 1):
            raise AuditError(f"JTT upweight {self.upweight:g}; allowed: a finite number >= 1 (1: no upweighting)")
        if self.jtt_epochs < 1:
            raise AuditError(f"JTT epochs {self.jtt_epochs}; allowed: at least 1")
        if not (math.isfinite(self.groupdro_eta) and self.groupdro_eta >= 0):
            raise AuditError(f"group DRO eta {self.groupdro_eta:g}; allowed: a finite number >= 0")
        if not (math.isfinite(self.groupdro_adjustment) and self.groupdro_adjustment >= 0):
            raise AuditError(f"group DRO adjustment {self.groupdro_adjustment:g}; allowed: a finite number >= 0")


def parse_methods(text: str, flag: str = "--mitigate") -> list[str]:
    """'erm,dfr' -> ['erm', 'dfr'], in the order given; unknown, duplicate or no methods are refused."""
    methods = [part.strip() for part in text.split(",")]
    validate_methods(methods, flag)
    return methods


def validate_methods(methods: list[str], where: str = "mitigation") -> None:
    if not methods or any(not m for m in methods):
        raise AuditError(f"{where} '{','.join(methods)}' names no method; allowed: a comma list of {allowed(METHODS)}")
    for m in methods:
        if m not in METHODS:
            raise AuditError(f"{where} method '{m}' is unknown; allowed: {allowed(METHODS)}")
    seen = [m for i, m in enumerate(methods) if m in methods[:i]]
    if seen:
        raise AuditError(f"{where} names '{seen[0]}' twice; allowed: each method once")


def group_ids(labels: torch.Tensor, shortcut_ids: torch.Tensor, num_classes: int, target_class: int | None):
    """(groups (N,) int64, number of groups): label x shortcut variant (see the module's docstring)."""
    if target_class is None:
        return labels * num_classes + shortcut_ids, num_classes * num_classes
    return labels * 2 + (shortcut_ids == target_class).long(), num_classes * 2


def group_names(classes: list[str], target_class: int | None) -> list[str]:
    """The groups' names in group order, as shortcut/metrics.py writes them ('3 x 5', '3 x none')."""
    variants = list(classes) if target_class is None else ["none", classes[target_class]]
    return [f"{label} x {variant}" for label in classes for variant in variants]


def balancing_weights(groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(N,) loss weights N / (G * n_g) over the G groups that have images: every group weighs N / G in total, and the
    weights average 1."""
    counts = torch.bincount(groups, minlength=num_groups).float()
    present = int((counts > 0).sum())
    return len(groups) / (present * counts[groups])


def jtt_weights(errors: torch.Tensor, upweight: float) -> torch.Tensor:
    """(N,) loss weights: `upweight` for the first pass's errors (bool (N,)), 1 for the others."""
    return torch.where(errors, torch.tensor(float(upweight)), torch.tensor(1.0))


def dfr_groups(split: Split, target_class: int | None) -> torch.Tensor:
    """DFR's groups on its held-out split: 0 where the shortcut agrees with the label, 1 where it conflicts.

    Not label x shortcut: a held-out split of 150 digits spreads over 100 label x shortcut groups, most empty or of
    one image, which cannot be balanced; aligned against conflicting is the balance the shortcut breaks."""
    return (~aligned_with_label(split.labels, split.shortcut_ids, target_class)).long()


DFR_MIN_PER_GROUP = 2  # DFR tunes its L1 strength on two halves of the balanced set: one image per half


def check_dfr_data(split: Split, target_class: int | None, rho: float, *, balanced: bool = False) -> None:
    """Refuse a split too small to balance: each of DFR's groups needs DFR_MIN_PER_GROUP images. balanced: the split
    is the group-balanced held-out set (planted at rho 1/2, so only more images help), else the validation split at
    the training rho."""
    counts = torch.bincount(dfr_groups(split, target_class), minlength=2).tolist()
    what = "the group-balanced held-out set" if balanced else f"the validation split at rho {rho:g}"
    advice = "more training data: it is the validation share of it" if balanced else "a lower rho or more data"
    for name, count in zip(("aligned", "conflicting"), counts, strict=True):
        if count < DFR_MIN_PER_GROUP:
            raise AuditError(
                f"dfr: {what} has {count} {name} image(s) of {len(split)}; allowed: at least {DFR_MIN_PER_GROUP} "
                f"per group (aligned, conflicting) to balance ({advice})"
            )


@dataclass
class Trained:
    """One method's model and what training it took: seconds (all of it, a first pass or the ERM model it starts
    from included), the fit's record, and the method's own record (weights used, DFR's choices)."""

    method: str
    model: PixelModel
    card: dict[str, Any]
    seconds: float
    fit: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The section's `training` entry: the fit's record with the method's total seconds and its details."""
        return {**self.fit, "seconds": self.seconds, "method": self.method, **self.details}


Progress = Callable[[str], ProgressFn | None]  # a method's name -> the fit's progress callback


def train_methods(
    methods: list[str],
    dataset: ControlledDataset,
    arch: str,
    config: TrainConfig,
    device: torch.device,
    *,
    width: int | None = None,
    mitigation: MitigationConfig | None = None,
    progress: Progress | None = None,
    held_out: Split | None = None,
) -> dict[str, Trained]:
    """One model per method, in the order given, each on `dataset` with `config` (seed included). ERM is trained
    once when dfr needs it too; dfr retrains its last layer on `held_out` (a group-balanced held-out split, as the
    paper assumes), else on the dataset's validation split. Under torchrun every process trains and then holds the
    first process's weights."""
    mitigation = mitigation or MitigationConfig()
    mitigation.validate()
    validate_methods(methods)
    dfr_split = dataset.val if held_out is None else held_out
    if "dfr" in methods:
        check_dfr_data(dfr_split, dataset.target_class, dataset.manifest["rho"], balanced=held_out is not None)

    def report(name: str) -> ProgressFn | None:
        return None if progress is None else progress(name)

    out: dict[str, Trained] = {}
    erm: Trained | None = None
    for name in methods:
        if name in ("erm", "dfr") and erm is None:
            erm = _erm(dataset, arch, config, device, width, report("erm"))
        if name == "erm":
            assert erm is not None
            out[name] = erm
        elif name == "dfr":
            assert erm is not None
            out[name] = _dfr(erm, dataset, dfr_split, held_out is not None, config, device)
        elif name == "jtt":
            out[name] = _jtt(dataset, arch, config, device, width, mitigation, report)
        else:
            out[name] = _grouped(name, dataset, arch, config, device, width, mitigation, report(name))
    return out


def _fit(
    method: str,
    dataset: ControlledDataset,
    arch: str,
    config: TrainConfig,
    device: torch.device,
    width: int | None,
    progress: ProgressFn | None,
    **loss: Any,
) -> Trained:
    model, fit, card = train_on_controlled(dataset, arch, config, device, width=width, progress=progress, **loss)
    share_weights_from_first(model)
    card["training"]["method"] = method
    return Trained(method, model, card, fit.seconds, asdict(fit))


def _erm(
    dataset: ControlledDataset,
    arch: str,
    config: TrainConfig,
    device: torch.device,
    width: int | None,
    progress: ProgressFn | None,
) -> Trained:
    return _fit("erm", dataset, arch, config, device, width, progress)


def _grouped(
    name: str,
    dataset: ControlledDataset,
    arch: str,
    config: TrainConfig,
    device: torch.device,
    width: int | None,
    mitigation: MitigationConfig,
    progress: ProgressFn | None,
) -> Trained:
    """reweight or groupdro, on the training split's label x shortcut groups."""
    train = dataset.train
    groups, count = group_ids(train.labels, train.shortcut_ids, dataset.num_classes, dataset.target_class)
    present = int((torch.bincount(groups, minlength=count) > 0).sum())
    if name == "reweight":
        weights = balancing_weights(groups, count)
        trained = _fit(name, dataset, arch, config, device, width, progress, weights=weights)
        trained.details = {"groups": present, "weight_min": float(weights.min()), "weight_max": float(weights.max())}
        return trained
    dro = GroupDRO(groups, count, eta=mitigation.groupdro_eta, adjustment=mitigation.groupdro_adjustment)
    trained = _fit(name, dataset, arch, config, device, width, progress, dro=dro)
    trained.details = {
        "groups": present,
        "eta": mitigation.groupdro_eta,
        "adjustment": mitigation.groupdro_adjustment,
        "q_max": float(dro.q.max()),
    }
    return trained


def jtt_errors(model: PixelModel, split: Split) -> torch.Tensor:
    """(N,) bool: the training images the first pass gets wrong."""
    return predict(model, split.images) != split.labels


def _jtt(
    dataset: ControlledDataset,
    arch: str,
    config: TrainConfig,
    device: torch.device,
    width: int | None,
    mitigation: MitigationConfig,
    report: Callable[[str], ProgressFn | None],
) -> Trained:
    """JTT: ERM for jtt_epochs (at most the full epochs), its training errors upweighted, then a fresh model (same
    seed) for the full epochs."""
    first_epochs = min(mitigation.jtt_epochs, config.epochs)
    first_config = TrainConfig(**{**asdict(config), "epochs": first_epochs})
    first = _fit("jtt", dataset, arch, first_config, device, width, report("jtt first pass"))
    errors = jtt_errors(first.model, dataset.train)
    trained = _fit(
        "jtt", dataset, arch, config, device, width, report("jtt"), weights=jtt_weights(errors, mitigation.upweight)
    )
    trained.seconds += first.seconds
    trained.details = {
        "upweight": mitigation.upweight,
        "jtt_epochs": first_epochs,
        "errors": int(errors.sum()),
    }
    return trained


DFR_BATCH = 256  # images per batch when DFR reads the features


def _dfr(
    erm: Trained,
    dataset: ControlledDataset,
    val: Split,
    balanced: bool,
    config: TrainConfig,
    device: torch.device,
) -> Trained:
    """DFR: the ERM model's last layer retrained on `val` (the group-balanced held-out split when `balanced`, else the
    validation split at the training rho), balanced over aligned / conflicting."""
    from .dfr import retrain_last_layer

    start = time.perf_counter()
    model, result = retrain_last_layer(
        copy.deepcopy(erm.model),
        val.images,
        val.labels,
        dfr_groups(val, dataset.target_class),
        num_classes=dataset.num_classes,
        seed=config.seed,
        batch_size=DFR_BATCH,
        device=device,
    )
    share_weights_from_first(model)
    seconds = time.perf_counter() - start
    card = copy.deepcopy(erm.card)
    card["training"]["method"] = "dfr"
    details = {
        "dfr": result.to_dict(),
        "dfr_data": (
            "the validation images planted again at rho 0.5 (a group-balanced held-out set)"
            if balanced
            else "validation split at the training rho"
        )
        + ", groups aligned / conflicting",
        "dfr_seconds": seconds,
        "erm_seconds": erm.seconds,
    }
    return Trained("dfr", model, card, erm.seconds + seconds, erm.fit, details)  # type: ignore[arg-type]
