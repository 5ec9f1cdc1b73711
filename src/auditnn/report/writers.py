"""Report files: metrics.csv (tidy), summary.md, junit.xml (when the Report holds a gate verdict), report.html,
pictures.pt and report.json, each rendered from the Report alone and written atomically (write_report); and
load_pictures, which reads a pictures.pt back and refuses any tensor the HTML page could not draw."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import torch

from ..errors import AuditError
from ..io import atomic_torch_save, atomic_write_text, prepare_output_dir, safe_torch_load
from .schema import LABELS, Report
from .tables import Table, bound_symbol, fmt, report_tables

PICTURES = "pictures.pt"


def metrics_frame(report: Report) -> pd.DataFrame:
    """One row per metric and labels (group, rho, method, ...): the tidy view of every number."""
    frame = pd.DataFrame(report.to_dict()["metrics"], dtype=object)  # object: steps stay 10, not 10.0, beside gaps
    # Known labels in their order, then any label a newer writer added: a column is never dropped silently.
    columns = [c for c in LABELS if c in frame.columns] + [c for c in frame.columns if c not in LABELS and c != "value"]
    columns.append("value")
    return frame.reindex(columns=columns) if len(frame) else pd.DataFrame(columns=["section", "metric", "value"])


def to_csv(report: Report) -> str:
    buffer = io.StringIO()
    metrics_frame(report).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


# Characters that Markdown (GitHub's, in PR comments and step summaries) would read as markup: emphasis, links and
# images, tables, headings, mentions, code, strike-through; '<', '>' and '&' become entities so no HTML gets through.
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MD_SPECIAL = set("\\`*_[]|#@!~")


def md_text(text: str) -> str:
    """A user string (check, class or attribute name, a message) shown literally in Markdown, on one line."""
    out = []
    for char in text:
        if char in _MD_ENTITIES:
            out.append(_MD_ENTITIES[char])
        elif char in _MD_SPECIAL:
            out.append("\\" + char)
        elif char in "\r\n":
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def markdown_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(md_text(c) for c in table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines)


def verdict_markdown(verdict: dict) -> str:
    status = "PASS" if verdict["passed"] else "FAIL"
    lines = [f"## Verdict: {status}", "", "| check | metric | measured | threshold | result |", "|---|---|---|---|---|"]
    for r in verdict["rows"]:
        mark = "pass" if r["passed"] else "**FAIL**"
        note = md_text(f" ({r['note']})") if r["note"] else ""
        lines.append(
            f"| {md_text(r['check'])} | {md_text(r['metric'])} | {fmt(r['measured'])} | "
            f"{bound_symbol(r['bound'])} {fmt(r['threshold'])} | {mark}{note} |"
        )
    return "\n".join(lines)


def to_markdown(report: Report) -> str:
    env = report.environment
    header = (
        f"seed {report.seed} · device {env.get('device', '?')} ({env.get('device_name', '?')}) · "
        f"torch {env.get('torch', '?')} · auditnn {env.get('auditnn', '?')} · {report.created}"
    )
    parts = [f"# auditnn {md_text(report.command)}: {md_text(report.run_id)}", "", md_text(header)]
    if "verdict" in report.results:
        parts += ["", verdict_markdown(report.results["verdict"])]
    for table in report_tables(report):
        parts += ["", f"## {md_text(table.title)}", "", markdown_table(table)]
    if report.warnings:
        parts += ["", "## Warnings", ""]
        parts += [f"- **{md_text(w['code'])}**: {md_text(w['message'])}" for w in report.warnings]
    return "\n".join(parts) + "\n"


def to_junit(report: Report, verdict: dict) -> str:
    """JUnit XML: one testcase per check, a <failure> naming each threshold it missed."""
    checks: dict[str, list[dict]] = {}
    for row in verdict["rows"]:
        checks.setdefault(row["check"], []).append(row)
    failures = sum(any(not r["passed"] for r in rows) for rows in checks.values())
    suites = ET.Element("testsuites", name="auditnn", tests=str(len(checks)), failures=str(failures), errors="0")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"auditnn {report.command}",
        tests=str(len(checks)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{report.timings.get('total', 0.0):.3f}",
        timestamp=report.created,
    )
    for name, rows in checks.items():
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"auditnn.{rows[0]['kind']}",
            name=name,
            time=f"{report.timings.get(name, 0.0):.3f}",
        )
        missed = [r for r in rows if not r["passed"]]
        lines = [
            f"{r['metric']}: measured {fmt(r['measured'])}, {bound_symbol(r['bound'])} {fmt(r['threshold'])}"
            + (f" ({r['note']})" if r["note"] else "")
            for r in rows
        ]
        if missed:
            first = missed[0]
            message = (
                f"{first['metric']} {fmt(first['measured'])} misses {bound_symbol(first['bound'])} "
                f"{fmt(first['threshold'])}"
            )
            failure = ET.SubElement(case, "failure", type="threshold", message=message)
            failure.text = "\n".join(lines)
        else:
            ET.SubElement(case, "system-out").text = "\n".join(lines)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def load_pictures(report: Report, report_dir: str | Path) -> dict[str, torch.Tensor]:
    """The tensors the HTML page draws, if the report has them (read with weights_only=True). The file must lie in
    the report's folder: a report.json from elsewhere does not get to open '../x' or '/etc/passwd'."""
    if not report.pictures:
        return {}
    folder = Path(report_dir).resolve()
    path = (folder / report.pictures).resolve()
    if not path.is_relative_to(folder) or path == folder:
        raise AuditError(
            f"report in '{report_dir}': key 'pictures' is {report.pictures!r}; "
            "allowed: a file inside the report's folder"
        )
    if not path.is_file():
        return {}
    pictures = safe_torch_load(path, "report pictures")
    if not isinstance(pictures, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in pictures.items()
    ):
        raise AuditError(
            f"report pictures '{path}' are not a dict of named tensors; allowed: the pictures.pt "
            "auditnn wrote beside report.json"
        )
    for key, value in pictures.items():
        problem = _picture_problem(key, value)
        if problem:
            raise AuditError(
                f"report pictures '{path}': '{key}' {problem}; allowed: the pictures.pt auditnn wrote "
                "beside report.json"
            )
    return pictures


# What the page draws, by the last part of a picture's name: (allowed numbers of dimensions, values in [0, 1]?).
# Images are (N, C, H, W) or a patch (C, H, W) with 1 or 3 channels; labels and predictions (N,) class indices.
PICTURE_SHAPES: dict[str, tuple[tuple[int, ...], bool]] = {
    "images": ((4,), True),
    "clean": ((4,), True),
    "adversarial": ((4,), True),
    "masks": ((4,), True),
    "patch": ((3,), True),
    "mask": ((2, 3), True),
    "labels": ((1,), False),
    "predictions": ((1,), False),
    "shortcut_ids": ((1,), False),
    "attribution": ((3,), False),
    "first_layer": ((2, 4), False),
    "first_layer_kind": ((0,), False),
}
MAX_PICTURE_ELEMENTS = 2**24  # the page shows a few dozen small images; 16M values is far beyond any auditnn wrote


def _picture_problem(key: str, value: torch.Tensor) -> str | None:
    """Why a tensor from a pictures file cannot be drawn, or None. Pictures files travel with reports between CI
    jobs: a tensor of another layout, size or range must be refused here, not crash the page."""
    if value.layout != torch.strided or value.is_complex():
        return "is not a dense real tensor"
    if value.numel() > MAX_PICTURE_ELEMENTS:
        return f"has {value.numel()} values, more than {MAX_PICTURE_ELEMENTS}"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return "holds NaN or infinite values"
    dims, unit = PICTURE_SHAPES.get(key.rsplit("/", 1)[-1], (None, False))
    if dims is None:
        return None  # a name the page does not draw
    if value.dim() not in dims:
        return f"has shape {list(value.shape)}; allowed: {' or '.join(str(d) for d in dims)} dimensions"
    if value.dim() in (3, 4) and unit and value.shape[-3] not in (1, 3):
        return f"has {value.shape[-3]} channels; allowed: 1 or 3"
    if unit and value.numel() and not (float(value.min()) >= 0 and float(value.max()) <= 1):
        return "holds values outside [0, 1]"
    if not unit and dims == (1,) and (value.is_floating_point() or (value.numel() and int(value.min()) < 0)):
        return "holds values that are not class indices"
    return None


def write_report(
    report: Report, out_dir: str | Path, *, pictures: dict[str, torch.Tensor] | None = None, html: bool = True
) -> Path:
    """Write metrics.csv, summary.md, junit.xml (when judged), pictures.pt, report.html and report.json into
    out_dir, each atomically. Every file is rendered before the first is written, so a rendering error writes
    nothing; report.json comes last, so a folder without it was never completed. The CLI passes a staging folder
    (io.staged_folder) that becomes the output folder only once all of this is done."""
    from .html import to_html

    if pictures:
        report.pictures = PICTURES
    texts = {"metrics.csv": to_csv(report), "summary.md": to_markdown(report)}
    if "verdict" in report.results:
        texts["junit.xml"] = to_junit(report, report.results["verdict"])
    if html:
        texts["report.html"] = to_html(report, pictures)
    texts["report.json"] = report.to_json()
    out = prepare_output_dir(out_dir)
    if pictures:
        atomic_torch_save(out / PICTURES, {k: v.detach().cpu() for k, v in pictures.items()})
    for name, text in texts.items():
        atomic_write_text(out / name, text)
    return out
