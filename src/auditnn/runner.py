"""The one runner: a Plan in, a Report out. It validates every check, resolves the subject once, measures each check
once (or reuses its record from an earlier run), stamps an audit file's rows with their check's name, places each
result in the report, and judges the report when the plan has thresholds.

Each check's result is kept as a record under the output folder (checks/<key>.json and .pt), keyed by everything
that determines it: its kind, name and settings, the seed, the device type, auditnn's version, and the subject's
fingerprint (the model's weights and the evaluation data), or for a check that builds its own data, the subject's
settings. A re-run with the same key reuses the record instead of measuring (`auditnn audit --resume`)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import Checkpoint, refuse_changed
from .checks import KINDS, CheckResult, Context
from .checks.base import first_layer_pictures
from .errors import AuditError
from .gate import Verdict, judge
from .io import atomic_torch_save, atomic_write_text, read_json, safe_torch_load
from .memory import parse_size
from .plan import Check, Plan
from .report.schema import Report, validate_record
from .report.writers import write_report
from .runtime import resolve_device, seed_everything
from .subject import Subject, load_subject

ProgressFn = Callable[[str, int, int, dict[str, float]], None]  # (task, epoch, epochs, row), after each epoch
RECORDS = "checks"  # the output folder's folder of per-check records


@dataclass
class Outcome:
    """A measured plan: its report (judged when the plan has thresholds), the pictures for the HTML page, and the
    files its checks keep (output name -> writer), written beside the report by write_outcome."""

    report: Report
    pictures: dict[str, torch.Tensor] = field(default_factory=dict)
    files: dict[str, Callable[[Path], Any]] = field(default_factory=dict)
    verdict: Verdict | None = None
    records: dict[str, tuple[str, CheckResult]] = field(default_factory=dict)  # key -> (kind, result), as kept
    reused: int = 0  # checks whose record came from an earlier run


@contextmanager
def _naming(plan: Plan, check: Check) -> Iterator[None]:
    """An error in an audit file's check (a target class the data lacks) names the file and the check."""
    try:
        yield
    except AuditError as exc:
        if plan.path is None:
            raise
        raise AuditError(f"{plan.path}: check '{check.name}': {exc}") from None


def validate_plan(plan: Plan) -> None:
    """Every setting that can be checked without data, before anything is trained or attacked."""
    resolve_device(plan.device)
    budget(plan)
    try:
        plan.subject.validate()
    except AuditError as exc:
        raise AuditError(f"{plan.path}: {exc}" if plan.path else str(exc)) from None
    for check in plan.checks:
        with _naming(plan, check):
            KINDS[check.kind].validate(check.settings, plan.subject)
            KINDS[check.kind].validate_thresholds(check.settings, check.thresholds)


def budget(plan: Plan) -> int | None:
    """The plan's memory budget in bytes (None: memory.default_budget of the device)."""
    if plan.max_memory is None:
        return None
    flag = f"{plan.path}: key 'run.max_memory'" if plan.path else "--max-memory"
    return parse_size(plan.max_memory, flag)


class _Collector:
    """Places each check's result in the report's parts: rows, results sections, warnings, pictures, files."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self.merged: dict[str, dict[str, Any]] = {}  # kinds whose checks share one section, placed last
        self.warnings: list[dict[str, str]] = []
        self.pictures: dict[str, torch.Tensor] = {}
        self.files: dict[str, Callable[[Path], Any]] = {}

    def add(self, check: Check, result: CheckResult, ctx: Context) -> None:
        kind, name = KINDS[check.kind], check.name
        stamp = {} if name is None else {"check": name}
        self.rows += [{**row, **stamp} for row in result.rows]
        self.warnings += [{**w, **stamp} for w in result.warnings]
        if name is None:  # a command's check: its section as measured, its files kept
            self.results[check.kind] = result.section
            self.files.update(result.files)
        elif kind.merged:
            self.merged[check.kind] = kind.merge(self.merged.get(check.kind), result.section, name)
        else:
            self.results[kind.section_key(name)] = {**result.section, "check": name}
        for key, value in result.pictures.items():
            where = kind.picture_key(key, name, check.settings, ctx)
            if where is not None:
                self.pictures[where] = value


def check_material(plan: Plan, check: Check, ctx: Context) -> dict[str, Any] | None:
    """What a check's result depends on (module docstring); None when the kind says its result is never reused."""
    inputs = KINDS[check.kind].inputs(check.settings, ctx)
    if inputs is None:
        return None
    return {
        "kind": check.kind,
        "name": check.name,
        "settings": asdict(check.settings),
        "seed": plan.seed,
        "device": ctx.device.type,
        "auditnn": __version__,
        "subject": asdict(plan.subject),
        "inputs": inputs,
    }


def check_key(plan: Plan, check: Check, ctx: Context) -> str | None:
    """check_material, hashed: the key of a check's record and of its saved batches."""
    return _hashed(check_material(plan, check, ctx))


def _hashed(material: dict[str, Any] | None) -> str | None:
    if material is None:
        return None
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _checkpoint(check: Check, material: dict[str, Any] | None, partial: Path, resume: bool) -> Checkpoint | None:
    """The saved batches of a check whose kind saves them: under partial/<key>; on resume, batches of the same
    check under another key are refused, naming what changed."""
    key = _hashed(material)
    if material is None or key is None:
        return None
    name = check.name or check.kind
    if resume:
        refuse_changed(partial, name, key, material)
    checkpoint = Checkpoint(partial / key, key, resume)
    checkpoint.start(name, material)
    return checkpoint


def run_plan(
    plan: Plan,
    *,
    run_id: str,
    environment: dict[str, Any],
    out_dir: Path | None = None,
    progress: ProgressFn | None = None,
    reuse: dict[str, tuple[str, CheckResult]] | None = None,
    partial: Path | None = None,
    resume: bool = False,
) -> Outcome:
    """Measure every check of the plan: those that share the subject first (it is resolved once), then those that
    build their own data. out_dir: the folder the report will be in (for paths it records); reuse: records of an
    earlier run (read_records), used for the checks whose key they hold; partial: where checks that save their
    batches as they go (CheckKind.saves_batches) keep them (checkpoint.partial_root), taken up again with resume."""
    validate_plan(plan)
    start = time.perf_counter()
    device = resolve_device(plan.device)
    subject: Subject | None = None
    if any(KINDS[c.kind].needs_subject for c in plan.checks):
        trained = None if progress is None else (lambda e, n, row: progress("model", e, n, row))
        subject = load_subject(plan.subject, device, plan.seed, trained)
    seed_everything(plan.seed)
    ctx = Context(subject, plan.subject, device, plan.seed, out_dir, progress, budget(plan))
    if plan.path:
        ctx.max_memory_name = f"{plan.path}: key 'run.max_memory'"
    collected, timings, records, reused = _Collector(), {}, {}, 0
    for check in sorted(plan.checks, key=lambda c: not KINDS[c.kind].needs_subject):
        began = time.perf_counter()
        with _naming(plan, check):
            saving = partial is not None and KINDS[check.kind].saves_batches
            # computed once, and only when used: a command's check keeps no record, and only some kinds save batches
            material = check_material(plan, check, ctx) if check.name is not None or saving else None
            key = None if check.name is None else _hashed(material)
            if reuse and key in reuse and reuse[key][0] == check.kind:  # a record of another kind is not its
                result, reused = reuse[key][1], reused + 1
            else:
                checkpoint = _checkpoint(check, material, partial, resume) if saving and partial else None
                result = KINDS[check.kind].measure(check.settings, replace(ctx, checkpoint=checkpoint))
        collected.add(check, result, ctx)
        if key is not None:  # an audit file's check: kept for a later --resume
            records[key] = (check.kind, result)
        timings[check.name or check.kind] = time.perf_counter() - began
    if subject is not None:
        shape = torch.Size(subject.data.test.shape)
        collected.pictures.update({f"model/{k}": v for k, v in first_layer_pictures(subject.model, shape).items()})
    timings["total"] = time.perf_counter() - start
    report = Report(
        command=plan.command,
        run_id=run_id,
        config=plan.config(),
        environment=environment,
        seed=plan.seed,
        results={**collected.results, **collected.merged},
        metrics=collected.rows,
        timings=timings,
        warnings=collected.warnings,
    )
    verdict = None
    if any(c.thresholds for c in plan.checks):
        verdict = judge(report, plan)
        report.results["verdict"] = verdict.to_dict()
    return Outcome(report, collected.pictures, collected.files, verdict, records, reused)


def write_outcome(outcome: Outcome, folder: Path) -> list[str]:
    """The report's files, then the files the checks keep, into `folder` (a staging folder: io.staged_folder).
    Returns the names written, in order."""
    if outcome.records:
        (folder / RECORDS).mkdir(parents=True, exist_ok=True)
    for key, (kind, result) in outcome.records.items():
        record = {"key": key, "kind": kind, "rows": result.rows, "section": result.section, "warnings": result.warnings}
        atomic_torch_save(folder / RECORDS / f"{key}.pt", dict(result.pictures))
        atomic_write_text(folder / RECORDS / f"{key}.json", json.dumps(record, allow_nan=True) + "\n")
    write_report(outcome.report, folder, pictures=outcome.pictures)
    for name, write in outcome.files.items():
        write(folder / name)
    written = ["report.json", "report.html"] + (["junit.xml"] if outcome.verdict is not None else [])
    return [*written, "metrics.csv", "summary.md", *outcome.files, *([f"{RECORDS}/"] if outcome.records else [])]


def read_records(folder: Path) -> dict[str, tuple[str, CheckResult]]:
    """The per-check records an earlier run left in its output folder (key -> (kind, result)). A record that cannot be
    read back whole, or is not what its name says (another check's, a field of the wrong type), is left out: its
    check is measured again."""
    records = {}
    for path in sorted((folder / RECORDS).glob("*.json")) if (folder / RECORDS).is_dir() else []:
        try:
            record = read_json(path, "check record", "")
            pictures = safe_torch_load(path.with_suffix(".pt"), "check record")
            _check_record(record, path.stem, pictures)
        except (AuditError, ValueError, RecursionError):
            continue
        result = CheckResult(record["rows"], record["section"], pictures, record["warnings"])
        records[path.stem] = (record["kind"], result)
    return records


def _check_record(record: Any, key: str, pictures: Any) -> None:
    """Raise AuditError unless the record is the one its file name says, with fields of the types the report's."""
    where = f"check record '{key}'"
    if not isinstance(record, dict) or record.get("key") != key or record.get("kind") not in KINDS:
        raise AuditError(f"{where} is not the record of a check with that key")
    validate_record(record, KINDS[record["kind"]].section_schema, where)
    if not isinstance(pictures, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in pictures.items()
    ):
        raise AuditError(f"{where}: its pictures are not named tensors")
