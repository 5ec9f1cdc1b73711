"""Report files: report.json, metrics.csv (tidy), summary.md. Each a pure function of the Report, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text, prepare_output_dir
from .schema import LABELS, Report
from .tables import Table, report_tables


def metrics_frame(report: Report) -> pd.DataFrame:
    """One row per metric and labels (group, rho, method, ...): the tidy view of every number."""
    frame = pd.DataFrame(report.to_dict()["metrics"])
    columns = [c for c in LABELS if c in frame.columns] + ["value"]
    return frame.reindex(columns=columns) if len(frame) else pd.DataFrame(columns=["section", "metric", "value"])


def to_csv(report: Report) -> str:
    buffer = io.StringIO()
    metrics_frame(report).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(_md_escape(c) for c in table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(_md_escape(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines)


def to_markdown(report: Report) -> str:
    env = report.environment
    parts = [
        f"# auditnn {report.command}: {report.run_id}",
        "",
        f"seed {report.seed} · device {env.get('device', '?')} ({env.get('device_name', '?')}) · "
        f"torch {env.get('torch', '?')} · auditnn {env.get('auditnn', '?')} · {report.created}",
    ]
    for table in report_tables(report):
        parts += ["", f"## {table.title}", "", markdown_table(table)]
    if report.warnings:
        parts += ["", "## Warnings", ""]
        parts += [f"- **{w['code']}**: {_md_escape(w['message'])}" for w in report.warnings]
    return "\n".join(parts) + "\n"


def write_report(report: Report, out_dir: str | Path) -> Path:
    """Write report.json, metrics.csv and summary.md into out_dir (each atomically; report.json last)."""
    out = prepare_output_dir(out_dir)
    atomic_write_text(out / "metrics.csv", to_csv(report))
    atomic_write_text(out / "summary.md", to_markdown(report))
    atomic_write_text(out / "report.json", report.to_json())
    return out
