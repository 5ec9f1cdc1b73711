"""The plan: what to measure (checks, each with typed settings and thresholds) on which subject, with which seed and
device. An audit file (TOML) and each command's options both become a Plan; runner.run_plan measures it and
gate.judge judges the report against it."""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .checks import KINDS
from .checks.base import BOOLEAN, INTEGER, NUMBER, NUMBERS, STRING, type_name
from .errors import AuditError, allowed
from .spec import DataSpec, ModelSpec
from .subject import SubjectSpec
from .train import TrainConfig
from .values import MAX_SEED

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MAX_AUDIT_FILE_BYTES = 2**20  # an audit file is read whole: 1 MiB holds thousands of checks
TABLES: dict[str, dict[str, str]] = {
    "model": {
        "source": STRING,
        "weights": STRING,
        "mean": NUMBERS,
        "std": NUMBERS,
        "width": INTEGER,
        "epochs": INTEGER,
    },
    "data": {
        "source": STRING,
        "dataset": STRING,
        "data_root": STRING,
        "download": BOOLEAN,
        "test_per_class": INTEGER,
        "strict": BOOLEAN,
    },
    "run": {"seed": INTEGER, "device": STRING, "max_memory": STRING},
}


@dataclass
class Threshold:
    key: str  # as written in the file, e.g. min_robust_accuracy
    metric: str  # the report's metric name
    bound: str  # 'min' (measured >= value passes) or 'max' (measured <= value passes)
    value: float


@dataclass
class Check:
    """One measurement. name: an audit file's check name, carried by every row it measures; None for a command's
    check (its report holds that one check, and its rows carry no name). settings: the kind's settings dataclass."""

    kind: str
    name: str | None
    settings: Any
    thresholds: list[Threshold] = field(default_factory=list)
    allow_warnings: list[str] = field(default_factory=list)  # unreliability warnings the gate lets pass (noted)

    def labels(self) -> dict[str, Any]:
        """The labels of the report rows this check judges (a row without a label has gate.LABEL_DEFAULTS')."""
        return KINDS[self.kind].labels(self.settings)


@dataclass
class Plan:
    """command: the report's command; path: the audit file it was read from (None: a command's options)."""

    command: str
    checks: list[Check]
    subject: SubjectSpec = field(default_factory=SubjectSpec)
    seed: int = 0
    device: str = "auto"
    path: str | None = None
    max_memory: str | None = None  # the memory budget of a batch, as written ("4GB"); None: a share of what is free

    def config(self) -> dict[str, Any]:
        """What the report records as its configuration: everything the plan holds, as JSON-able data."""
        return {
            "audit_file": self.path,
            "seed": self.seed,
            "device": self.device,
            "max_memory": self.max_memory,
            "subject": asdict(self.subject),
            "checks": [asdict(c) for c in self.checks],
        }


def type_ok(value: Any, kind: str) -> bool:
    """Whether a TOML value is written as `kind` says (NUMBER, INTEGER, ...)."""
    if kind == NUMBER:  # TOML has nan and inf: no setting or threshold takes them
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == BOOLEAN:
        return isinstance(value, bool)
    if kind == NUMBERS:
        return isinstance(value, list) and bool(value) and all(type_ok(v, NUMBER) for v in value)
    return isinstance(value, str)


def _resolve_path(text: str, base: Path) -> str:
    """Relative paths in an audit file are relative to the file's own folder."""
    path = Path(text)
    return str(path if path.is_absolute() else base / path)


def _read(path: Path) -> dict[str, Any]:
    where = str(path)
    if not path.exists():
        raise AuditError(f"audit file '{where}' does not exist; give a TOML file (see examples/audit.toml)")
    if not path.is_file():
        raise AuditError(f"audit file '{where}' is not a regular file; give a TOML file (see examples/audit.toml)")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_AUDIT_FILE_BYTES + 1)  # never more: a device file or a huge file is not read whole
    except OSError as exc:
        raise AuditError(f"audit file '{where}' cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_AUDIT_FILE_BYTES:
        raise AuditError(
            f"audit file '{where}' is larger than {MAX_AUDIT_FILE_BYTES // 2**20} MiB; allowed: an audit "
            "file of at most 1 MiB (a few checks take a few hundred bytes)"
        )
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"audit file '{where}' is not valid TOML: {exc}") from None


def _tables(data: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    unknown = sorted(set(data) - set(TABLES) - {"check"})
    if unknown:
        raise AuditError(f"{where}: unknown key '{unknown[0]}'; allowed: {allowed([*TABLES, 'check'])}")
    tables: dict[str, dict[str, Any]] = {}
    for table, schema in TABLES.items():
        section = data.get(table, {})
        if not isinstance(section, dict):
            raise AuditError(f"{where}: '{table}' must be a table ([{table}])")
        for key, value in section.items():
            if key not in schema:
                raise AuditError(f"{where}: unknown key '{table}.{key}'; allowed: {allowed(schema)}")
            if not type_ok(value, schema[key]):
                raise AuditError(f"{where}: key '{table}.{key}' is {value!r}; allowed: {schema[key]}")
        tables[table] = dict(section)
    seed = tables["run"].get("seed", 0)
    if not 0 <= seed <= MAX_SEED:
        raise AuditError(f"{where}: key 'run.seed' is {seed}; allowed: 0 to {MAX_SEED}")
    return tables


def _subject(model: dict[str, Any], data: dict[str, Any], seed: int, base: Path, where: str) -> SubjectSpec:
    """The [model] and [data] tables as a SubjectSpec, relative paths read from the file's folder. A trained model
    without [data] dataset is measured on every image of the source; an architecture trains on a split of it."""
    try:
        spec = ModelSpec(model.get("source", "cnn"), model.get("weights"), model.get("mean"), model.get("std"))
        source = DataSpec.source(data.get("source", "digits")).relative_to(base)
        given = DataSpec.parse(data["dataset"]).relative_to(base) if "dataset" in data else None
    except AuditError as exc:
        raise AuditError(f"{where}: {exc}") from None
    spec = spec.relative_to(base)
    return SubjectSpec(
        model=spec,
        base=source,
        data=given or (None if spec.is_architecture else source),
        data_root=None if "data_root" not in data else _resolve_path(data["data_root"], base),
        download=data.get("download", False),
        test_per_class=data.get("test_per_class", 30),
        strict=data.get("strict", False),
        width=model.get("width"),
        train=TrainConfig(epochs=model.get("epochs", 10), seed=seed),
    )


def load_plan(path: str | Path) -> Plan:
    """Read and validate an audit file; every error names the file, the key and what is allowed."""
    path = Path(path)
    where = str(path)
    data = _read(path)
    tables = _tables(data, where)
    raw_checks = data.get("check", [])
    if not isinstance(raw_checks, list) or not raw_checks:
        raise AuditError(f"{where}: no [[check]] entries; allowed: one or more of kind {allowed(KINDS)}")
    checks = [_parse_check(raw, i + 1, where, path.parent) for i, raw in enumerate(raw_checks)]
    names = [c.name for c in checks]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise AuditError(f"{where}: two checks are named '{duplicate}'; give each a distinct 'name'")
    seed = tables["run"].get("seed", 0)
    subject = _subject(tables["model"], tables["data"], seed, path.parent, where)
    device, max_memory = tables["run"].get("device", "auto"), tables["run"].get("max_memory")
    return Plan("audit", checks, subject, seed, device, where, max_memory)


def _parse_check(raw: Any, number: int, where: str, base: Path) -> Check:
    at = f"{where}: check #{number}"
    if not isinstance(raw, dict):
        raise AuditError(f"{at} must be a table ([[check]])")
    name = raw.get("kind")
    if name not in KINDS:
        raise AuditError(f"{at} key 'kind' is {name!r}; allowed: {allowed(KINDS)}")
    kind, at = KINDS[name], f"{at} ({name})"
    keys, lists, paths = kind.file_keys(), _list_fields(kind.settings), _path_fields(kind.settings)
    values: dict[str, Any] = {}
    thresholds = []
    allow: list[str] = []
    for key, value in raw.items():
        if key in ("kind", "name"):
            if key == "name" and (not isinstance(value, str) or not value):
                raise AuditError(f"{at} key 'name' is {value!r}; allowed: a name of at least one character")
            continue
        if key == "allow_warnings":
            allow = _allowed_warnings(value, kind.unreliable_warnings, at)
            continue
        if key in kind.thresholds:
            ratio = key in kind.ratio_thresholds
            if not type_ok(value, NUMBER) or not 0.0 <= value <= (math.inf if ratio else 1.0):
                raise AuditError(
                    f"{at} key '{key}' is {value!r}; allowed: {'a number >= 0' if ratio else 'a number in [0, 1]'}"
                )
            metric, bound = kind.thresholds[key]
            thresholds.append(Threshold(key, metric, bound, float(value)))
            continue
        if key not in keys:
            raise AuditError(f"{at} has unknown key '{key}'; allowed: {allowed([*keys, *kind.thresholds, 'name'])}")
        value = kind.from_file(key, value, at)
        if not type_ok(value, keys[key]):
            raise AuditError(f"{at} key '{key}' is {value!r}; allowed: {keys[key]}")
        value = float(value) if keys[key] == NUMBER else value
        value = _resolve_path(str(value), base) if key in paths else value
        values[key] = [value] if key in lists else value
    missing = [k for k in kind.required() if k not in values]
    if missing:
        raise AuditError(f"{at} is missing key '{missing[0]}'")
    if not thresholds:
        raise AuditError(f"{at} has no threshold; allowed: {allowed(kind.thresholds)}")
    settings = kind.settings(**values)
    return Check(name, raw.get("name", kind.default_name(settings)), settings, thresholds, allow)


def _allowed_warnings(value: Any, codes: frozenset[str], at: str) -> list[str]:
    """allow_warnings: a list of the warning codes of this kind that say its figure may not be trusted."""
    if not codes:
        raise AuditError(
            f"{at} has unknown key 'allow_warnings' (this kind raises no warning the gate judges); "
            "allowed: allow_warnings on an attack check"
        )
    listed = sorted(codes)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuditError(
            f"{at} key 'allow_warnings' is {value!r}; allowed: a list of warning codes, e.g. [\"{listed[0]}\"]"
        )
    unknown = [v for v in value if v not in codes]
    if unknown:
        raise AuditError(f"{at} key 'allow_warnings' names '{unknown[0]}'; allowed: {allowed(listed)}")
    return list(value)


def _list_fields(settings: type) -> set[str]:
    """Settings an audit file gives one value of and the kind takes a list of (eps, rho)."""
    return {f.name for f in fields(settings) if type_name(f.type).startswith("list[")}


def _path_fields(settings: type) -> set[str]:
    return {f.name for f in fields(settings) if f.metadata.get("path")}
