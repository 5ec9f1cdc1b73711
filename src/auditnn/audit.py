"""Run an audit file: measure every check once (shared data and model), then judge the report against the file."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Iterator

import torch

from .attacks.audit import AttackAuditConfig, AttackAuditResult, attack_report, fit_patch
from .attacks.evaluate import AttackSpec, evaluate_attack
from .attacks.patch import PatchConfig
from .data.controlled import BuildConfig, ShortcutConfig
from .data.sources import ImageSet
from .errors import AuditError
from .gate import Check, Policy, Verdict, judge
from .inference import predict
from .models.load import first_layer_pictures
from .report.schema import Report, metric_row
from .models.user import UserModelSpec, split_model_spec
from .runtime import resolve_device, seed_everything
from .shortcut.annotated import annotated_metrics, load_association, read_groups, tag_sensitivity
from .shortcut.audit import ShortcutAuditConfig, run_shortcut_audit, shortcut_report
from .shortcut.user import groups_rows, sensitivity_rows
from .subject import EvalData, check_model_spec, load_eval_data, resolve_model
from .train import ProgressFn, TrainConfig


def _attack_spec(settings: dict[str, Any], seed: int) -> AttackSpec:
    target = settings.get("target")
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    return AttackSpec(method=settings["method"], norm=settings["norm"], eps=[settings["eps"]], steps=settings["steps"],
                      restarts=settings["restarts"], target=target, seed=seed)


def validate_policy(policy: Policy) -> None:
    """Check every setting before anything is trained or attacked."""
    check_model_spec(policy.model.get("source", "cnn"))
    resolve_device(policy.run.get("device", "auto"))
    for check in policy.checks:
        at = f"{policy.path}: check '{check.name}'"
        try:
            if check.kind == "attack":
                _attack_spec(check.settings, 0).validate()
            elif check.kind == "patch":
                s = check.settings
                PatchConfig(size=s["size"], shape=s["shape"], target=s["target"], steps=s["steps"]).validate()
            elif check.kind == "shortcut":
                _shortcut_config(policy, check.settings).validate()
            elif check.kind == "sensitivity":
                _planted(check.settings).validate()
        except AuditError as exc:
            raise AuditError(f"{at}: {exc}") from None


def _planted(s: dict[str, Any]) -> ShortcutConfig:
    return ShortcutConfig(tag=s["tag"], size=s.get("size"), opacity=s.get("opacity"), position=s.get("position"),
                          target_class=s.get("target_class"))


def _model_spec(policy: Policy) -> UserModelSpec:
    m = policy.model
    return UserModelSpec(m.get("source", "cnn"), m.get("weights"), m.get("mean"), m.get("std"))


def _shortcut_config(policy: Policy, s: dict[str, Any]) -> ShortcutAuditConfig:
    seed = policy.run.get("seed", 0)
    data = policy.data
    build = BuildConfig(
        base=data.get("source", "digits"), shortcut=_planted(s),
        rho=s["rho"], seed=seed, test_per_class=data.get("test_per_class", 30), data_root=data.get("data_root"),
        download=data.get("download", False),
    )
    model = _model_spec(policy)
    return ShortcutAuditConfig(
        build=build, rhos=[s["rho"]], model=model.spec, weights=model.weights, mean=model.mean, std=model.std,
        width=policy.model.get("width"),
        train=TrainConfig(epochs=s.get("epochs", policy.model.get("epochs", 10)), seed=seed),
        device=policy.run.get("device", "auto"),
    )


def _stamped(rows: list[dict[str, Any]], check: Check) -> list[dict[str, Any]]:
    """Each row carries the name of the check that measured it: the gate finds a check's rows by that name."""
    return [{**row, "check": check.name} for row in rows]


def _section_key(check: Check) -> str:
    """results key of a check whose result is one section: 'sensitivity/<check name>', so two never overwrite."""
    return "clean" if check.kind == "clean" else f"{check.kind}/{check.name}"


@contextmanager
def _naming(policy: Policy, check: Check) -> Iterator[None]:
    """An error found while measuring (a target class the data lacks) names the audit file and the check."""
    try:
        yield
    except AuditError as exc:
        raise AuditError(f"{policy.path}: check '{check.name}': {exc}") from None


def _measure(
    check: Check, model: torch.nn.Module, data: EvalData, source: str, described: dict[str, Any], seed: int,
    device: torch.device, run_id: str,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, torch.Tensor]]:
    """One check on the audited model: (metric rows, its results section, pictures for the HTML page)."""
    s = check.settings
    if check.kind == "clean":
        accuracy = float((predict(model, data.test_images) == data.test_labels).float().mean())
        section = {"accuracy": accuracy, "n": len(data.test_labels), "model": source, "data": described}
        return [metric_row("clean", "accuracy", accuracy)], section, {}
    if check.kind == "attack":
        attack_spec = _attack_spec(s, seed)
        evaluation = evaluate_attack(model, data.test_images, data.test_labels, attack_spec)
        partial = attack_report(AttackAuditResult(evaluation, None, source, described, str(device), 0.0),
                                AttackAuditConfig(method=attack_spec.method, attack=attack_spec),
                                run_id=run_id, environment={})
        section = {"rows": partial.results["attack"]["rows"], "warnings": partial.warnings}
        return partial.metrics, section, {f"attack/{check.name}/{k}": v for k, v in evaluation.examples.items()}
    if check.kind == "sensitivity":
        shortcut = _planted(s).build(data.num_classes)
        measured = tag_sensitivity(model, data.test_images, data.test_labels, shortcut, data.classes,
                                   target_class=s.get("target_class"), seed=seed)
        return sensitivity_rows(measured), {**measured.to_dict(), "model": source, "data": described}, {}
    if check.kind == "groups":
        images = ImageSet(data.test_images, data.test_labels, data.classes, names=data.test_names)
        notes = read_groups(s["groups"], s["attribute"], images)
        association = load_association(notes, data.classes, s.get("associate"), s.get("associate_from"))
        measured = annotated_metrics(predict(model, data.test_images), data.test_labels, notes, data.classes,
                                     association=association)
        return groups_rows(measured), {**measured.to_dict(), "model": source, "data": described}, {}
    config = PatchConfig(size=s["size"], shape=s["shape"], target=s["target"], steps=s["steps"], seed=seed)
    config.validate(data.num_classes)
    patch = fit_patch(model, data, config, seed)
    partial = attack_report(AttackAuditResult(None, patch, source, described, str(device), 0.0),
                            AttackAuditConfig(method="patch", patch=config), run_id=run_id, environment={})
    prefix = f"patch/{check.name}"
    found = {f"{prefix}/patch": patch.patch, f"{prefix}/mask": patch.mask,
             **{f"{prefix}/{k}": v for k, v in patch.examples.items()}}
    return partial.metrics, partial.results["patch"], found


def run_audit(
    policy: Policy, *, run_id: str, environment: dict[str, Any], progress: ProgressFn | None = None,
) -> tuple[Report, Verdict, dict[str, torch.Tensor]]:
    """Measure every check of the policy. Returns (report, verdict, pictures for the HTML page)."""
    validate_policy(policy)
    start = time.perf_counter()
    seed = policy.run.get("seed", 0)
    device = resolve_device(policy.run.get("device", "auto"))
    data_cfg, model_cfg = policy.data, policy.model
    needs_subject = any(c.kind in ("clean", "attack", "patch", "sensitivity", "groups") for c in policy.checks)
    spec = _model_spec(policy)
    trained_model = split_model_spec(spec.spec)[0] != "arch"
    results: dict[str, Any] = {}
    metrics: list[dict[str, Any]] = []
    warnings: list[dict[str, str]] = []
    pictures: dict[str, torch.Tensor] = {}
    timings: dict[str, float] = {}
    if needs_subject:
        # An architecture trains on a split of the source; a trained model is measured on all of the user's images.
        source_spec = data_cfg.get("source", "digits")
        data = load_eval_data(
            base=source_spec, data=data_cfg.get("dataset") or (source_spec if trained_model else None),
            data_root=data_cfg.get("data_root"), download=data_cfg.get("download", False),
            test_per_class=data_cfg.get("test_per_class", 30), seed=seed, strict=data_cfg.get("strict", False),
        )
        model, _, source, data = resolve_model(
            spec, data, TrainConfig(epochs=model_cfg.get("epochs", 10), seed=seed), device,
            width=model_cfg.get("width"), progress=progress,
        )
        described = {**data.description, "classes": data.classes, "n_test": len(data.test_labels)}
        seed_everything(seed)
        attack_rows: list[dict[str, Any]] = []
        for check in policy.checks:
            if check.kind == "shortcut":
                continue
            t0 = time.perf_counter()
            with _naming(policy, check):
                rows, section, found = _measure(check, model, data, source, described, seed, device, run_id)
            metrics += _stamped(rows, check)
            warnings += [{**w, "check": check.name} for w in section.get("warnings", [])]
            if check.kind == "attack":
                attack_rows += _stamped(section["rows"], check)
            else:
                results[_section_key(check)] = {**section, "check": check.name}
            pictures.update(found)
            timings[check.name] = time.perf_counter() - t0
        if attack_rows:
            results["attack"] = {"rows": attack_rows, "model": source, "data": described}
        pictures.update({f"model/{k}": v for k, v in first_layer_pictures(model, data.test_images.shape[1:]).items()})
    shortcut_rows: list[dict[str, Any]] = []
    for check in policy.checks:
        if check.kind != "shortcut":
            continue
        t0 = time.perf_counter()
        config = _shortcut_config(policy, check.settings)
        with _naming(policy, check):
            result = run_shortcut_audit(config)
        partial = shortcut_report(result, config, run_id=run_id, environment={})
        metrics += _stamped(partial.metrics, check)
        shortcut_rows += _stamped(partial.results["shortcut"]["rows"], check)
        for key, value in result.pictures.items():  # keys: shortcut/<tag>/rho=<rho>/<picture>
            # The page draws the first layer once: the audited model's when there is one.
            if not (needs_subject and key.endswith("/first_layer")):
                pictures[f"shortcut/{check.name}/{key.split('/', 3)[3]}"] = value
        timings[check.name] = time.perf_counter() - t0
    if shortcut_rows:
        results["shortcut"] = {"rows": shortcut_rows}
    timings["total"] = time.perf_counter() - start
    report = Report(
        command="audit", run_id=run_id, environment=environment, seed=seed, results=results, metrics=metrics,
        timings=timings, warnings=warnings,
        config={"audit_file": policy.path, "model": policy.model, "data": policy.data, "run": policy.run,
                "checks": [asdict(c) for c in policy.checks]},
    )
    verdict = judge(report, policy)
    report.results["verdict"] = verdict.to_dict()
    return report, verdict, pictures

