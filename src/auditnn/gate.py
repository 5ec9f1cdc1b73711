"""The gate: a report + a plan's checks and thresholds -> a verdict (pass/fail per check and threshold).

A check finds the metric rows it judges by its name (an audit's rows carry it) and the labels its settings give
(eps, rho, target, ...), so an audit file can re-judge any report auditnn wrote, and compare it with a baseline
report, without recomputing anything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .errors import AuditError
from .report.schema import Report

if TYPE_CHECKING:
    from .plan import Check, Plan

# What a row that leaves a label out was measured with: an attack row without `target` was untargeted, one without
# `step_size` took the default step, one without `sanity` had its sanity runs in the worst-case headline.
LABEL_DEFAULTS: dict[str, Any] = {"target": None, "restarts": 1, "step_size": None, "sanity": True}
# Shares are measured in float32 (21/60 is 0.3499999940), rounded by at most 3e-8 in [0, 1]: a share within this of
# its threshold (or a change within this of max_drop) is equal to it, and equality passes. One image is at least 1e-7
# of a share up to ten million images, so no real difference is this small.
SHARE_TOLERANCE = 1e-7


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


def find_row(
    report: Report, check: Check, metric: str, what: str = "report", *, by_name: bool = True
) -> dict[str, Any] | None:
    """The row in which the report measured this check's metric, or None when it did not measure it. Two rows that
    fit one check are an error: the gate never picks one of them."""
    hits = [r for r in report.metrics if _fits(r, check.kind, metric, check, by_name=by_name)]
    if len(hits) > 1:
        raise AuditError(
            f"{len(hits)} rows of {what} '{report.run_id}' fit check '{check.name}' ({metric}); "
            "allowed: one row per check (re-run with auditnn audit, whose rows carry check names)"
        )
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


def _reliability(report: Report, check: Check) -> tuple[str, str]:
    """(why the check's figure cannot pass, or ''; a note naming the warnings the audit file allowed, or ''). A
    warning belongs to the check it is stamped with (an audit's), or, unstamped (a single command's report), to a
    check of the kind that raises its code."""
    from .checks import KINDS

    codes = KINDS[check.kind].unreliable_warnings
    mine = [
        w
        for w in report.warnings
        if w.get("code") in codes and (w.get("check") == check.name if "check" in w else True)
    ]
    blocking = list(dict.fromkeys(w["code"] for w in mine if w["code"] not in check.allow_warnings))
    allowed_codes = list(dict.fromkeys(w["code"] for w in mine if w["code"] in check.allow_warnings))
    why = ""
    if blocking:
        why = f"unreliable: {', '.join(blocking)}; see the warnings, and allow_warnings to accept a code"
    return why, f"allowed: {', '.join(allowed_codes)}" if allowed_codes else ""


def judge(report: Report, plan: Plan, *, baseline: Report | None = None, max_drop: float | None = None) -> Verdict:
    """Each threshold of each check against the report; with a baseline, each gated metric must not worsen by
    more than max_drop (down for 'min' metrics, up for 'max' metrics). Equality passes."""
    if max_drop is not None and not 0.0 <= max_drop <= 1.0:
        raise AuditError(f"max drop {max_drop:g} is outside [0, 1]; allowed: 0 <= max drop <= 1")
    rows: list[VerdictRow] = []
    for check in plan.checks:
        name = check.name or check.kind
        unreliable, allowed_note = _reliability(report, check)
        for t in check.thresholds:
            measured = find_metric(report, check, t.metric)
            if measured is None:
                rows.append(
                    VerdictRow(name, check.kind, t.metric, None, t.bound, t.value, False, "not measured in this report")
                )
                continue
            ok = measured >= t.value - SHARE_TOLERANCE if t.bound == "min" else measured <= t.value + SHARE_TOLERANCE
            note = unreliable or allowed_note
            rows.append(VerdictRow(name, check.kind, t.metric, measured, t.bound, t.value, ok and not unreliable, note))
            if baseline is None or max_drop is None:
                continue
            old_row, found = _baseline_row(baseline, check, t.metric)
            if old_row is None or old_row["value"] is None:
                rows.append(
                    VerdictRow(name, check.kind, t.metric, measured, "max drop", max_drop, True, "not in the baseline")
                )
                continue
            old = float(old_row["value"])
            worse = (old - measured) if t.bound == "min" else (measured - old)
            note = f"baseline {old:.4f}{found}, change {-worse:+.4f}"
            rows.append(
                VerdictRow(
                    name,
                    check.kind,
                    t.metric,
                    measured,
                    "max drop",
                    max_drop,
                    worse <= max_drop + SHARE_TOLERANCE,
                    note,
                )
            )
    return Verdict(rows)
