"""The Report: every number a run measured, its configuration and environment, as plain JSON-able data.

Schema versions only add fields; a reader refuses a report whose version it does not know.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import AuditError
from ..io import read_json

SCHEMA = "auditnn.report"
SCHEMA_VERSION = 1
# Label columns of a tidy metric row, in CSV order; a row leaves out those that do not apply.
LABELS = (
    "section",
    "metric",
    "check",
    "group",
    "attribute",
    "tag",
    "rho",
    "method",
    "norm",
    "eps",
    "steps",
    "target",
    "restarts",
)


@dataclass
class Report:
    command: str
    run_id: str
    config: dict[str, Any]
    environment: dict[str, Any]
    seed: int
    results: dict[str, Any]  # section name -> that section's result data
    metrics: list[dict[str, Any]]  # tidy rows: the LABELS that apply, plus "value"
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"code", "message"}
    pictures: str | None = None  # a tensor file beside report.json with the images the HTML page draws
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"


def _json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def metric_row(section: str, metric: str, value: float | None, **labels: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"section": section, "metric": metric}
    row.update({k: v for k, v in labels.items() if v is not None})
    row["value"] = value
    return row


# ---------------------------------------------------------------- reading a report back

# Report files travel between CI jobs and come from forks: every field a reader uses is checked for its type before
# anything renders it. A spec is a type name below, a one-item list (a list of that spec), or a dict of key -> spec
# (a key ending in '?' may be absent; keys the spec does not name are allowed, as later versions add fields).
STR, INT, NUM, NUM_OR_NULL, BOOL, ANY = "a string", "an integer", "a number", "a number or null", "true or false", "any"
STR_OR_NULL, INT_OR_NULL, TARGET = (
    "a string or null",
    "an integer or null",
    "a class index, 'random', 'least-likely' or null",
)
SCALAR = "a string, a number, true, false or null"
TABLE = "a table of names to values"
BOUNDS = ("min", "max", "max drop")
DATA = {"classes?": [STR], "n_test?": INT}
BATCH = {"size": INT, "chosen_by": STR, "budget_bytes?": INT, "per_image_bytes?": INT}  # checks.base.batch_size_for
METRIC_LABELS = {
    "section": STR,
    "metric": STR,
    "value": NUM_OR_NULL,
    "group?": STR,
    "attribute?": STR,
    "tag?": STR,
    "rho?": NUM,
    "method?": STR,
    "norm?": STR,
    "eps?": NUM,
    "steps?": INT,
    "check?": STR,
    "target?": TARGET,
    "restarts?": INT,
    "*": SCALAR,
}
# The verdict's section; every check kind declares its own (checks/: CheckKind.section_schema).
SECTIONS: dict[str, dict[str, Any]] = {
    "verdict": {
        "passed": BOOL,
        "failed_checks": [STR],
        "rows": [
            {
                "check": STR,
                "kind": STR,
                "metric": STR,
                "measured": NUM_OR_NULL,
                "bound": BOUNDS,
                "threshold": NUM,
                "passed": BOOL,
                "note": STR,
            }
        ],
    },
}
REPORT_FIELDS: dict[str, Any] = {
    "command": STR,
    "run_id": STR,
    "config": {},
    "environment": {},
    "seed": INT,
    "results": {},
    "metrics": [METRIC_LABELS],
    "timings?": {"*": NUM},
    "warnings?": [{"code": STR, "message": STR, "*": SCALAR}],
    "pictures?": STR_OR_NULL,
    "created?": STR,
    "schema": STR,
    "schema_version": INT,
}


def _is_number(value: Any) -> bool:
    """JSON numbers auditnn writes: never NaN or infinity (those are written as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _fits_type(value: Any, spec: str | tuple[str, ...]) -> bool:
    if isinstance(spec, tuple):
        return value in spec
    return {
        STR: isinstance(value, str),
        INT: isinstance(value, int) and not isinstance(value, bool),
        NUM: _is_number(value),
        NUM_OR_NULL: value is None or _is_number(value),
        BOOL: isinstance(value, bool),
        STR_OR_NULL: value is None or isinstance(value, str),
        INT_OR_NULL: value is None or (isinstance(value, int) and not isinstance(value, bool)),
        TARGET: value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)),
        SCALAR: value is None or isinstance(value, (str, bool)) or _is_number(value),
        ANY: True,
    }[spec]


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _validate(value: Any, spec: Any, key: str, where: str) -> None:
    """Raise an AuditError naming the file, the key (as a path: results.attack.rows[0].eps) and what is allowed."""
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise AuditError(f"{where}: key '{key}' is {_shown(value)}; allowed: a list")
        for i, item in enumerate(value):
            _validate(item, spec[0], f"{key}[{i}]", where)
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise AuditError(f"{where}: key '{key}' is {_shown(value)}; allowed: {TABLE}")
        for name, sub in spec.items():
            if name == "*":
                for have, item in value.items():
                    if have not in spec and have + "?" not in spec:
                        _validate(item, sub, _join(key, have), where)
                continue
            optional = name.endswith("?")
            name = name.rstrip("?")
            if name not in value:
                if optional:
                    continue
                raise AuditError(f"{where}: key '{_join(key, name)}' is missing; allowed: {_allowed(sub)}")
            _validate(value[name], sub, _join(key, name), where)
    elif not _fits_type(value, spec):
        raise AuditError(f"{where}: key '{key}' is {_shown(value)}; allowed: {_allowed(spec)}")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _allowed(spec: Any) -> str:
    if isinstance(spec, tuple):
        return " or ".join(f"'{s}'" for s in spec)
    if isinstance(spec, list):
        return "a list"
    return TABLE if isinstance(spec, dict) else spec


def _section_schema(kind: str) -> dict[str, Any] | None:
    from ..checks import KINDS  # the kinds import this module for metric_row and the type names

    if kind in SECTIONS:
        return SECTIONS[kind]
    return KINDS[kind].section_schema if kind in KINDS else None


def validate_report(data: Any, where: str) -> None:
    """Every field a reader uses has its type; results sections are checked by their kind (an audit keys a check's
    section 'sensitivity/<check name>'); any section's data.classes are strings."""
    _validate(data, REPORT_FIELDS, "", where)
    for name, section in data["results"].items():
        key = f"results.{name}"
        spec = _section_schema(name.split("/", 1)[0])
        if spec is not None:
            _validate(section, spec, key, where)
        elif isinstance(section, dict):
            _validate(section, {"data?": DATA}, key, where)


def validate_record(record: dict[str, Any], section: dict[str, Any], where: str) -> None:
    """A check's record (runner.write_outcome): its rows, warnings and section have the report's types."""
    _validate(record, {"rows": [METRIC_LABELS], "warnings": REPORT_FIELDS["warnings?"], "section": section}, "", where)


def load_report(path: str | Path) -> Report:
    """Read report.json, refusing other schemas, unknown versions and fields of the wrong type with the file and
    the key named."""
    path = Path(path)
    try:
        data = read_json(path, "report", "give a report.json written by auditnn")
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, nesting deeper than Python's stack
        raise AuditError(f"report '{path}' is not a JSON file auditnn reads ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise AuditError(f"report '{path}' is not an auditnn report (key 'schema' must be '{SCHEMA}')")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise AuditError(f"report '{path}' has schema_version {version!r}; allowed: 1 .. {SCHEMA_VERSION}")
    validate_report(data, f"report '{path}'")
    known = set(Report.__dataclass_fields__)
    return Report(**{k: v for k, v in data.items() if k in known})
