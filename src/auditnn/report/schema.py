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
LABELS = ("section", "metric", "group", "attribute", "tag", "rho", "method", "norm", "eps", "steps")


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
    row = {"section": section, "metric": metric}
    row.update({k: v for k, v in labels.items() if v is not None})
    row["value"] = value
    return row


def load_report(path: str | Path) -> Report:
    """Read report.json, refusing other schemas and unknown versions with the file named."""
    path = Path(path)
    data = read_json(path, "report", "give a report.json written by auditnn")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise AuditError(f"report '{path}' is not an auditnn report (key 'schema' must be '{SCHEMA}')")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise AuditError(f"report '{path}' has schema_version {version!r}; allowed: 1 .. {SCHEMA_VERSION}")
    known = set(Report.__dataclass_fields__)
    try:
        return Report(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise AuditError(f"report '{path}' is missing fields ({exc})") from None
