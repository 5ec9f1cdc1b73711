"""Robust accuracy under an attack (FGSM or PGD) at each eps, with the sanity runs that catch gradient masking."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..attacks.base import ATTACKS
from ..attacks.evaluate import MASKING_WARNINGS, PGD_STEPS, AttackSpec, evaluate_attack
from ..io import check_new_folder, output_folder
from ..report.schema import BATCH, DATA, INT, NUM, NUM_OR_NULL, STR, TARGET, metric_row
from ..report.tables import Table, fmt
from ..runtime import compile_or_eager
from ..subject import SubjectSpec
from ..values import fmt_eps, parse_number
from .base import NUMBER, STRING, UPPER_BATCH, CheckKind, CheckResult, Context, batch_size_for, cli_only, register

ROW_METRICS = (
    "clean_accuracy",
    "robust_accuracy",
    "success_rate",
    "mean_perturbation",
    "max_perturbation",
    "seconds",
    "images_per_second",
)


@dataclass
class AttackSettings:
    """eps: radii in the norm's pixel units (an audit file gives one per check: the gate judges one row each);
    target: a class index, 'random', 'least-likely' or None (untargeted); step_size: PGD's, pixel units (None:
    2.5 x eps / steps); sanity: run the gradient-masking checks, whose runs join the worst-case headline."""

    eps: list[float] = field(metadata={"file": NUMBER})
    method: str = "pgd"
    norm: str = "linf"
    steps: int | None = None  # None: the method's own default (PGD 10)
    restarts: int = 1
    target: int | str | None = field(default=None, metadata={"file": STRING})
    step_size: float | None = None
    sanity: bool = True
    version: str = "standard"  # autoattack's: standard, plus or rand
    target_classes: int | None = None  # apgd-t, fab, autoattack: other classes each point is pushed toward (None: 9,
    # at most K-1)
    queries: int = 5000  # square and autoattack: model evaluations per point
    loss: str = "ce"  # apgd's: ce or dlr
    batch_size: int | None = field(default=None, metadata=cli_only())  # None: chosen from memory (batch_size_for)
    compile: bool = field(default=False, metadata=cli_only())  # torch.compile the model first
    save_adversarial: str | None = field(default=None, metadata=cli_only())  # folder for the adversarial images


def attack_spec(settings: AttackSettings, seed: int) -> AttackSpec:
    target = settings.target
    if isinstance(target, str) and target.isdigit():  # an audit file writes a class as a string
        target = int(target)
    return AttackSpec(
        method=settings.method,
        norm=settings.norm,
        eps=list(settings.eps),
        steps=settings.steps,
        restarts=settings.restarts,
        step_size=settings.step_size,
        target=target,
        batch_size=UPPER_BATCH if settings.batch_size is None else settings.batch_size,
        seed=seed,
        sanity=settings.sanity,
        version=settings.version,
        target_classes=settings.target_classes,
        queries=settings.queries,
        loss=settings.loss,
    )


def _takes_steps(method: str) -> bool:
    """Whether the attack named `method` takes a number of steps (an unknown name is refused by validate)."""
    cls = ATTACKS.get(method)
    return cls is None or "steps" in {f.name for f in dataclasses.fields(cls)}


def _steps(settings: AttackSettings) -> int:
    """The steps the attack takes: the setting, else the method's default (1 for an attack without steps)."""
    if not _takes_steps(settings.method):
        return 1
    if settings.steps is not None:
        return settings.steps
    cls = ATTACKS.get(settings.method)
    default = next((f.default for f in dataclasses.fields(cls) if f.name == "steps"), None) if cls else None
    return default if isinstance(default, int) else PGD_STEPS


ENSEMBLE_SETTINGS = ("version", "target_classes", "queries", "loss")  # labels of a row where the method takes them


def _taken(method: str, settings: AttackSettings) -> dict[str, Any]:
    """The settings of ENSEMBLE_SETTINGS that `method` takes: they change its figure, so its rows carry them."""
    cls = ATTACKS.get(method)
    taken = set() if cls is None else set(cls.settings())
    return {name: getattr(settings, name) for name in ENSEMBLE_SETTINGS if name in taken}


def attack_setting(row: dict[str, Any]) -> str:
    """'PGD linf, 10 steps' plus the target and restarts where they are set: what tells two attack runs apart."""
    steps = row["steps"]
    text = f"{row['method'].upper()} {row['norm']}, {steps} step{'s' if steps != 1 else ''}"
    if row.get("target") is not None:
        text += f", target {row['target']}"
    if row.get("restarts", 1) != 1:
        text += f", {row['restarts']} restarts"
    return text


@register
class Attack(CheckKind[AttackSettings]):
    name = "attack"
    settings = AttackSettings
    thresholds = {"min_robust_accuracy": ("robust_accuracy", "min")}
    merged = True
    unreliable_warnings = MASKING_WARNINGS
    saves_batches = True
    section_schema = {
        "model": STR,
        "data": DATA,
        "batch?": BATCH,
        "batches?": {"*": BATCH},
        "adversarial_folder?": STR,
        "rows": [
            {
                "method": STR,
                "norm": STR,
                "eps": NUM,
                "steps": INT,
                "check?": STR,
                "target?": TARGET,
                "restarts?": INT,
                "left_out?": INT,
                "robust_accuracy_per_attack?": {"*": NUM_OR_NULL},
                "broken_by_attack?": {"*": INT},
                **{k: NUM_OR_NULL for k in ROW_METRICS},
            }
        ],
    }

    @classmethod
    def from_file(cls, key: str, value: Any, at: str) -> Any:
        if key == "eps" and isinstance(value, str):
            return parse_number(value, f"{at} key 'eps'")
        if key == "target" and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if key == "target" and isinstance(value, str) and value.isdigit():
            return str(int(value))  # "03" is class 3, as the attack reads it
        return value

    def validate(self, settings: AttackSettings, spec: SubjectSpec) -> None:
        attack_spec(settings, 0).validate()
        if settings.save_adversarial is not None:
            check_new_folder(settings.save_adversarial, "--save-adversarial")

    def title(self, settings: AttackSettings) -> tuple[str, tuple[str, ...]]:
        steps = f" {_steps(settings)} steps" if _takes_steps(settings.method) else ""
        eps = ",".join(fmt_eps(e) for e in settings.eps)
        return f"{settings.method} {settings.norm} eps={eps}{steps}", ("method", "norm", "eps", "steps")

    def labels(self, settings: AttackSettings) -> dict[str, Any]:
        return {
            "method": settings.method,
            "norm": settings.norm,
            "eps": settings.eps[0],
            "steps": _steps(settings),
            "target": settings.target,
            "restarts": settings.restarts,
            "step_size": settings.step_size,
            "sanity": settings.sanity,
            **_taken(settings.method, settings),
        }

    def measure(self, settings: AttackSettings, ctx: Context) -> CheckResult:
        subject = ctx.subject
        assert subject is not None  # needs_subject: the runner resolved it
        model, warnings = subject.model, []
        if settings.compile:
            model, reason = compile_or_eager(model, subject.data.test.read(torch.arange(2)).to(subject.device))
            if reason:
                warnings.append({"code": "compile_unavailable", "message": reason})
        spec = attack_spec(settings, ctx.seed)
        batch = batch_size_for(ctx, settings.batch_size, copies=spec.build(max(spec.eps)).memory_copies())
        spec = dataclasses.replace(spec, batch_size=batch["size"])
        save = None if settings.save_adversarial is None else Path(settings.save_adversarial)
        data = subject.data
        if save is None:
            evaluation = evaluate_attack(model, data.test, data.test_labels, spec, checkpoint=ctx.checkpoint)
        else:
            # checked before anything ran (validate); not again here: under torchrun another process may already
            # have written its first batch into it
            with output_folder(save, "--save-adversarial folder"):
                try:
                    evaluation = evaluate_attack(model, data.test, data.test_labels, spec, save_adversarial=save)
                except BaseException:  # a failed run leaves no batch files behind (output_folder removes the folder)
                    for written in save.glob("batch-*.pt"):
                        written.unlink(missing_ok=True)
                    raise
        rows = []
        for r in evaluation.rows:
            # every setting that changes the figure is a label: the gate never judges a check by another setting's row
            labels = dict(
                method=r.method,
                norm=r.norm,
                eps=r.eps,
                steps=r.steps,
                target=r.target,
                restarts=r.restarts,
                step_size=spec.step_size,
                sanity=spec.sanity,
                **_taken(settings.method, settings),
            )
            rows += [metric_row("attack", name, getattr(r, name), **labels) for name in ROW_METRICS]
        section = {**evaluation.to_dict(), "model": subject.source, "data": subject.described, "batch": batch}
        if save is not None:
            section["adversarial_folder"] = str(save)
        return CheckResult(rows, section, dict(evaluation.examples), warnings + evaluation.warnings)

    def picture_key(self, key: str, name: str | None, settings: AttackSettings, ctx: Context) -> str | None:
        return f"attack/{name or settings.method + '-' + settings.norm}/{key}"

    def merge(self, into: dict[str, Any] | None, section: dict[str, Any], name: str) -> dict[str, Any]:
        merged = into if into is not None else {"rows": [], "model": section["model"], "data": section["data"]}
        if "batch" in section:  # each check's batch size, as a single command's section records its own
            merged.setdefault("batches", {})[name] = section["batch"]
        return super().merge(merged, section, name)

    def tables(self, section: dict[str, Any]) -> list[Table]:
        """One table per attack setting (method, norm, steps, target, restarts), one row per eps; an audit's rows
        also name their check. 'robust acc' is the per-sample worst case over every run at that eps; where sanity
        runs joined it, each run's own figure has a column."""
        tables = []
        runs: dict[str, list[dict[str, Any]]] = {}
        for r in section["rows"]:
            runs.setdefault(attack_setting(r), []).append(r)
        for setting, rows in runs.items():
            named = any("check" in r for r in rows)
            labels = list(dict.fromkeys(k for r in rows for k in r.get("robust_accuracy_per_attack", {})))
            own = labels if len(labels) > 1 else []
            members = list(dict.fromkeys(k for r in rows for k in r.get("broken_by_attack", {})))
            columns = ["check"] * named + [
                "eps",
                "clean acc",
                "robust acc" + (" (worst)" if own else ""),
                *own,
                *(f"broken by {m}" for m in members),
                "success",
                "mean |d|",
                "max |d|",
                "time s",
                "img/s",
            ]
            body = [
                [r.get("check", "-")] * named
                + [
                    fmt_eps(r["eps"]),
                    fmt(r["clean_accuracy"]),
                    fmt(r["robust_accuracy"]),
                    *(fmt(r["robust_accuracy_per_attack"].get(k)) for k in own),
                    *(str(r.get("broken_by_attack", {}).get(m, "-")) for m in members),
                    fmt(r["success_rate"]),
                    fmt(r["mean_perturbation"], 4),
                    fmt(r["max_perturbation"], 4),
                    fmt(r["seconds"], 2),
                    "-" if r["images_per_second"] is None else f"{r['images_per_second']:,.0f}",
                ]
                for r in rows
            ]
            left_out = max(r.get("left_out", 0) for r in rows)
            images = f"{section['data']['n_test']} test images" + (
                f", {left_out} left out as label = target" if left_out else ""
            )
            tables.append(Table(f"Robust accuracy: {setting} ({images}, model {section['model']})", columns, body))
        return tables
