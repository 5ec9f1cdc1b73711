"""The audit file (TOML) and the gate: policy + report -> verdict (pass/fail per check and threshold).

A check names the metric rows of a report it judges (section, metric and labels such as eps or rho), so a policy
can re-judge any report auditnn wrote, and compare it with a baseline report, without recomputing anything.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import AuditError, allowed
from .report.schema import Report
from .values import MAX_SEED, fmt_eps, parse_number

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Per kind: settings (key -> type), and thresholds (key -> (metric, 'min' or 'max')).
NUMBER, INTEGER, STRING, BOOLEAN = "a finite number", "an integer", "a string", "true or false"
NUMBERS = "a list of finite numbers"
KIND_SETTINGS: dict[str, dict[str, str]] = {
    "clean": {},
    "attack": {"method": STRING, "norm": STRING, "eps": NUMBER, "steps": INTEGER, "restarts": INTEGER, "target": STRING},
    "shortcut": {"tag": STRING, "rho": NUMBER, "size": INTEGER, "opacity": NUMBER, "position": STRING,
                 "target_class": INTEGER, "epochs": INTEGER},
    "patch": {"size": NUMBER, "shape": STRING, "target": INTEGER, "steps": INTEGER},
    "sensitivity": {"tag": STRING, "size": INTEGER, "opacity": NUMBER, "position": STRING, "target_class": INTEGER},
    "groups": {"groups": STRING, "attribute": STRING, "associate": STRING, "associate_from": STRING},
}
KIND_THRESHOLDS: dict[str, dict[str, tuple[str, str]]] = {
    "clean": {"min_accuracy": ("accuracy", "min")},
    "attack": {"min_robust_accuracy": ("robust_accuracy", "min")},
    "shortcut": {"max_reliance": ("reliance", "max"), "min_worst_group_accuracy": ("worst_group_accuracy", "min"),
                 "max_gap": ("gap", "max")},
    "patch": {"max_target_success_rate": ("target_success_rate", "max"),
              "min_accuracy_with_patch": ("accuracy_with_patch", "min")},
    "sensitivity": {"max_flip_rate": ("flip_rate", "max"), "max_toward_rate": ("toward_rate", "max")},
    "groups": {"min_worst_group_accuracy": ("worst_group_accuracy", "min"), "max_gap": ("gap", "max"),
               "max_agreement_rate": ("agreement_rate", "max")},
}
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "clean": {},
    "attack": {"method": "pgd", "norm": "linf", "steps": 10, "restarts": 1},
    "shortcut": {"rho": 0.95},
    "patch": {"size": 0.3, "shape": "square", "target": 0, "steps": 300},
    "sensitivity": {"tag": "watermark"},
    "groups": {},
}
MAX_AUDIT_FILE_BYTES = 2**20  # an audit file is read whole: 1 MiB holds thousands of checks
REQUIRED = {"attack": ("eps",), "shortcut": ("tag",), "groups": ("groups", "attribute")}
TABLES: dict[str, dict[str, str]] = {
    "model": {"source": STRING, "weights": STRING, "mean": NUMBERS, "std": NUMBERS, "width": INTEGER, "epochs": INTEGER},
    "data": {"source": STRING, "dataset": STRING, "data_root": STRING, "download": BOOLEAN, "test_per_class": INTEGER,
             "strict": BOOLEAN},
    "run": {"seed": INTEGER, "device": STRING},
}


@dataclass
class Threshold:
    key: str  # as written in the file, e.g. min_robust_accuracy
    metric: str  # the report's metric name
    bound: str  # 'min' (measured >= value passes) or 'max' (measured <= value passes)
    value: float


@dataclass
class Check:
    kind: str
    name: str
    settings: dict[str, Any]
    thresholds: list[Threshold]

    def labels(self) -> dict[str, Any]:
        """The labels of the report rows this check judges (a row without a label in LABEL_DEFAULTS has its default)."""
        s = self.settings
        if self.kind == "attack":
            steps = 1 if s["method"] == "fgsm" else s["steps"]
            return {"method": s["method"], "norm": s["norm"], "eps": s["eps"], "steps": steps,
                    "target": s.get("target"), "restarts": s["restarts"], "step_size": None, "sanity": True}
        if self.kind == "shortcut":
            return {"tag": s["tag"], "rho": s["rho"]}
        if self.kind == "patch":
            return {"method": "patch"}
        if self.kind == "sensitivity":
            return {"tag": s["tag"]}
        if self.kind == "groups":
            return {"attribute": s["attribute"]}
        return {}


# What a row that leaves a label out was measured with: an attack row without `target` was untargeted, one without
# `step_size` took the default step, one without `sanity` had its sanity runs in the worst-case headline.
LABEL_DEFAULTS: dict[str, Any] = {"target": None, "restarts": 1, "step_size": None, "sanity": True}


@dataclass
class Policy:
    path: str
    checks: list[Check]
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)


def _type_ok(value: Any, kind: str) -> bool:
    if kind == NUMBER:  # TOML has nan and inf: no setting or threshold takes them
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == BOOLEAN:
        return isinstance(value, bool)
    if kind == NUMBERS:
        return isinstance(value, list) and bool(value) and all(_type_ok(v, NUMBER) for v in value)
    return isinstance(value, str)


def default_check_name(kind: str, s: dict[str, Any]) -> str:
    """A name built from the settings that change the measurement, so that two checks differing in one setting get
    two names: the kind's main settings, then every other setting that differs from its default."""
    if kind == "attack":
        steps = "" if s["method"] == "fgsm" else f" {s['steps']} steps"
        name, shown = f"{s['method']} {s['norm']} eps={fmt_eps(s['eps'])}{steps}", ("method", "norm", "eps", "steps")
    elif kind == "shortcut":
        name, shown = f"shortcut {s['tag']} rho={s['rho']:g}", ("tag", "rho")
    elif kind == "patch":
        name, shown = f"patch {s['size']:g} target={s['target']}", ("size", "target")
    elif kind == "sensitivity":
        name, shown = f"planted {s['tag']} sensitivity", ("tag",)
    elif kind == "groups":
        name, shown = f"groups by {s['attribute']}", ("attribute", "groups")
    else:
        return "clean accuracy"
    defaults = KIND_DEFAULTS[kind]
    extras = [f"{k}={s[k]:g}" if isinstance(s[k], float) else f"{k}={s[k]}" for k in KIND_SETTINGS[kind]
              if k in s and k not in shown and s[k] != defaults.get(k)]
    return " ".join([name, *extras])


def _resolve_path(text: str, base: Path) -> str:
    """Relative paths in an audit file are relative to the file's own folder."""
    path = Path(text)
    return str(path if path.is_absolute() else base / path)


def load_policy(path: str | Path) -> Policy:
    """Read and validate an audit file; every error names the file, the key and what is allowed."""
    path = Path(path)
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
        raise AuditError(f"audit file '{where}' is larger than {MAX_AUDIT_FILE_BYTES // 2**20} MiB; allowed: an audit "
                         "file of at most 1 MiB (a few checks take a few hundred bytes)")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"audit file '{where}' is not valid TOML: {exc}") from None
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
            if not _type_ok(value, schema[key]):
                raise AuditError(f"{where}: key '{table}.{key}' is {value!r}; allowed: {schema[key]}")
        tables[table] = dict(section)
    seed = tables["run"].get("seed", 0)
    if not 0 <= seed <= MAX_SEED:
        raise AuditError(f"{where}: key 'run.seed' is {seed}; allowed: 0 to {MAX_SEED}")
    base = path.parent
    if "dataset" in tables["data"]:
        tables["data"]["dataset"] = _resolve_path(tables["data"]["dataset"], base)
    for table, key in (("data", "data_root"), ("model", "weights")):
        if key in tables[table]:
            tables[table][key] = _resolve_path(tables[table][key], base)
    for key, table in (("source", "model"), ("source", "data")):
        value = tables[table].get(key, "")
        for prefix in ("auditnn:", "imagefolder:", "tensors:", "export:", "torchscript:"):
            if value.startswith(prefix):
                tables[table][key] = prefix + _resolve_path(value.removeprefix(prefix), base)
    raw_checks = data.get("check", [])
    if not isinstance(raw_checks, list) or not raw_checks:
        raise AuditError(f"{where}: no [[check]] entries; allowed: one or more of kind {allowed(KIND_SETTINGS)}")
    checks = [_parse_check(raw, i + 1, where) for i, raw in enumerate(raw_checks)]
    for check in checks:
        for key in ("groups", "associate_from"):
            if key in check.settings:
                check.settings[key] = _resolve_path(check.settings[key], base)
    names = [c.name for c in checks]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise AuditError(f"{where}: two checks are named '{duplicate}'; give each a distinct 'name'")
    return Policy(where, checks, tables["model"], tables["data"], tables["run"])


def _parse_check(raw: Any, number: int, where: str) -> Check:
    at = f"{where}: check #{number}"
    if not isinstance(raw, dict):
        raise AuditError(f"{at} must be a table ([[check]])")
    kind = raw.get("kind")
    if kind not in KIND_SETTINGS:
        raise AuditError(f"{at} key 'kind' is {kind!r}; allowed: {allowed(KIND_SETTINGS)}")
    settings, thresholds = dict(KIND_DEFAULTS[kind]), []
    for key, value in raw.items():
        if key in ("kind", "name"):
            if key == "name" and not isinstance(value, str):
                raise AuditError(f"{at} ({kind}) key 'name' is {value!r}; allowed: a string")
            continue
        if key in KIND_THRESHOLDS[kind]:
            if not _type_ok(value, NUMBER) or not 0.0 <= value <= 1.0:
                raise AuditError(f"{at} ({kind}) key '{key}' is {value!r}; allowed: a number in [0, 1]")
            metric, bound = KIND_THRESHOLDS[kind][key]
            thresholds.append(Threshold(key, metric, bound, float(value)))
            continue
        if key not in KIND_SETTINGS[kind]:
            keys = [*KIND_SETTINGS[kind], *KIND_THRESHOLDS[kind], "name"]
            raise AuditError(f"{at} ({kind}) has unknown key '{key}'; allowed: {allowed(keys)}")
        expected = KIND_SETTINGS[kind][key]
        if key == "eps" and isinstance(value, str):
            value = parse_number(value, f"{at} ({kind}) key 'eps'")
        if key == "target" and kind == "attack" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if key == "target" and kind == "attack" and isinstance(value, str) and value.isdigit():
            value = str(int(value))  # "03" is class 3, as the attack reads it
        if not _type_ok(value, expected):
            raise AuditError(f"{at} ({kind}) key '{key}' is {value!r}; allowed: {expected}")
        settings[key] = float(value) if expected == NUMBER else value
    missing = [k for k in REQUIRED.get(kind, ()) if k not in settings]
    if missing:
        raise AuditError(f"{at} ({kind}) is missing key '{missing[0]}'")
    if not thresholds:
        raise AuditError(f"{at} ({kind}) has no threshold; allowed: {allowed(KIND_THRESHOLDS[kind])}")
    return Check(kind, raw.get("name") or default_check_name(kind, settings), settings, thresholds)


# ---------------------------------------------------------------- judging


@dataclass
class VerdictRow:
    check: str
    kind: str
    metric: str
    measured: float | None
    bound: str  # min, max, or 'max drop' for baseline rows
    threshold: float
    passed: bool
    note: str = ""


@dataclass
class Verdict:
    rows: list[VerdictRow]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def failed_checks(self) -> list[str]:
        return list(dict.fromkeys(r.check for r in self.rows if not r.passed))

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed_checks": self.failed_checks(), "rows": [asdict(r) for r in self.rows]}


def _same(have: Any, want: Any) -> bool:
    if have is None or want is None:
        return have is want
    if isinstance(want, float) or isinstance(have, float):
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12)
    return str(have) == str(want)  # a target written as 3 in one file and "3" in another is one target


def _fits(row: dict[str, Any], section: str, metric: str, check: Check, *, by_name: bool = True) -> bool:
    """Whether a row measured this check's metric. A row stamped with check names must carry this check's name, and
    the labels it carries must agree (a renamed setting is not the same measurement). A row without check names (a
    single command's report), or any row when by_name is False, is judged by its labels alone, a label it leaves out
    taking its default."""
    if row.get("section") != section or row.get("metric") != metric or "group" in row:
        return False
    stamped = by_name and "check" in row
    if stamped and row["check"] != check.name:
        return False
    for key, want in check.labels().items():
        if key in row:
            if not _same(row[key], want):
                return False
        elif not stamped and not _same(LABEL_DEFAULTS.get(key), want):
            return False
    return True


def find_row(report: Report, check: Check, metric: str, what: str = "report", *,
             by_name: bool = True) -> dict[str, Any] | None:
    """The row in which the report measured this check's metric, or None when it did not measure it. Two rows that
    fit one check are an error: the gate never picks one of them."""
    section = "clean" if check.kind == "clean" else check.kind
    hits = [r for r in report.metrics if _fits(r, section, metric, check, by_name=by_name)]
    if len(hits) > 1:
        raise AuditError(f"{len(hits)} rows of {what} '{report.run_id}' fit check '{check.name}' ({metric}); "
                         "allowed: one row per check (re-run with auditnn audit, whose rows carry check names)")
    return hits[0] if hits else None


def find_metric(report: Report, check: Check, metric: str, what: str = "report") -> float | None:
    """The value the report measured for this check's metric, or None when it did not measure it."""
    row = find_row(report, check, metric, what)
    return None if row is None or row["value"] is None else float(row["value"])


def _baseline_row(baseline: Report, check: Check, metric: str) -> tuple[dict[str, Any] | None, str]:
    """The baseline's row for this check: by its name, else (a renamed check) the one row measured with its settings.
    Returns (row, a note naming the baseline check when it was found by settings)."""
    row = find_row(baseline, check, metric, "baseline report")
    if row is not None:
        return row, ""
    row = find_row(baseline, check, metric, "baseline report", by_name=False)
    if row is not None and row.get("check", check.name) != check.name:
        return row, f" (baseline check '{row['check']}', same settings)"
    return row, ""


def judge(report: Report, policy: Policy, *, baseline: Report | None = None, max_drop: float | None = None) -> Verdict:
    """Each threshold of each check against the report; with a baseline, each gated metric must not worsen by
    more than max_drop (down for 'min' metrics, up for 'max' metrics). Equality passes."""
    if max_drop is not None and not 0.0 <= max_drop <= 1.0:
        raise AuditError(f"max drop {max_drop:g} is outside [0, 1]; allowed: 0 <= max drop <= 1")
    rows = []
    for check in policy.checks:
        for t in check.thresholds:
            measured = find_metric(report, check, t.metric)
            if measured is None:
                rows.append(VerdictRow(check.name, check.kind, t.metric, None, t.bound, t.value, False,
                                       "not measured in this report"))
                continue
            ok = measured >= t.value if t.bound == "min" else measured <= t.value
            rows.append(VerdictRow(check.name, check.kind, t.metric, measured, t.bound, t.value, ok))
            if baseline is not None and max_drop is not None:
                old_row, found = _baseline_row(baseline, check, t.metric)
                if old_row is None or old_row["value"] is None:
                    rows.append(VerdictRow(check.name, check.kind, t.metric, measured, "max drop", max_drop, True,
                                           "not in the baseline"))
                    continue
                old = float(old_row["value"])
                worse = (old - measured) if t.bound == "min" else (measured - old)
                rows.append(VerdictRow(check.name, check.kind, t.metric, measured, "max drop", max_drop,
                                       worse <= max_drop + 1e-12, f"baseline {old:.4f}{found}, change {-worse:+.4f}"))
    return Verdict(rows)
