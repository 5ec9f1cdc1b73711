"""auditnn audit, auditnn gate and auditnn report: the CI gate and the report viewers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table as RichTable

from ..audit import run_audit
from ..gate import judge, load_policy
from ..io import atomic_write_text, output_folder, staged_folder
from ..report.html import to_html
from ..report.schema import load_report
from ..report.tables import fmt, report_tables
from ..report.writers import load_pictures, to_junit, verdict_markdown, write_report
from ..runtime import environment, resolve_device
from .common import Consoles, epoch_progress, output_dir, render_table, run_id

EXIT_GATE_FAILED = 1
report_app = typer.Typer(help="Show or render an existing report.", no_args_is_help=True, add_completion=False)


def render_verdict(verdict: dict) -> RichTable:
    status = "[bold green]PASS[/]" if verdict["passed"] else "[bold red]FAIL[/]"
    table = RichTable(title=f"Verdict: {status}", title_justify="left", header_style="bold")
    for column in ("check", "metric", "measured", "threshold", "result"):
        table.add_column(column, overflow="fold")
    for r in verdict["rows"]:
        bound = {"min": ">=", "max": "<="}.get(r["bound"], r["bound"])
        result = "[green]pass[/]" if r["passed"] else "[red]FAIL[/]"
        note = f" ({r['note']})" if r["note"] else ""
        table.add_row(r["check"], r["metric"], fmt(r["measured"]), f"{bound} {fmt(r['threshold'])}", result + note)
    return table


def _step_summary(markdown: str) -> None:
    """GitHub Actions shows what is appended to $GITHUB_STEP_SUMMARY on the run's page."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")


def audit(
    file: Annotated[Path, typer.Argument(help="The audit file (TOML): model, data and checks with thresholds.")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: reports/<run-id>/).")] = None,
    exit_zero: Annotated[bool, typer.Option(help="Report failing checks but exit 0.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")] = False,
) -> int:
    """Run every check of an audit file, write the report, print the verdict; exit 1 when a check fails."""
    consoles = Consoles(quiet)
    policy = load_policy(file)
    device = resolve_device(policy.run.get("device", "auto"))
    rid = run_id("audit", file.stem)
    out_dir = output_dir(out, rid)
    with staged_folder(out_dir) as staging:
        with epoch_progress(consoles, "training") as update:
            report, verdict, pictures = run_audit(policy, run_id=rid, environment=environment(device),
                                                  progress=lambda e, n, row: update("model", e, n, row))
        write_report(report, staging, pictures=pictures)
    for table in report_tables(report):
        consoles.out.print(render_table(table))
    consoles.out.print(render_verdict(verdict.to_dict()))
    for warning in report.warnings:
        consoles.err.print(f"[bold yellow]warning[/] {warning['code']}: {warning['message']}")
    _step_summary(verdict_markdown(verdict.to_dict()))
    consoles.note(f"report written to {out_dir}/ (report.json, report.html, junit.xml, metrics.csv, summary.md)")
    if not verdict.passed:
        consoles.note(f"failed: {', '.join(verdict.failed_checks())}")
    return 0 if verdict.passed or exit_zero else EXIT_GATE_FAILED


def gate(
    report_file: Annotated[Path, typer.Argument(help="A report.json written by auditnn.")],
    policy: Annotated[Path, typer.Option(help="The audit file whose checks and thresholds judge the report.")],
    baseline: Annotated[Optional[Path], typer.Option(help="An older report.json (the main branch's, say) to compare with.")] = None,
    max_drop: Annotated[float, typer.Option(help="With --baseline: the most a gated metric may worsen.")] = 0.02,
    out: Annotated[Optional[Path], typer.Option(help="Folder for junit.xml and verdict.md.")] = None,
    exit_zero: Annotated[bool, typer.Option(help="Report failing checks but exit 0.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> int:
    """Re-judge an existing report against an audit file's thresholds (and a baseline), without recomputing."""
    consoles = Consoles(quiet)
    rules = load_policy(policy)
    report = load_report(report_file)
    old = load_report(baseline) if baseline is not None else None
    verdict = judge(report, rules, baseline=old, max_drop=max_drop if old is not None else None).to_dict()
    if out is not None:
        with output_folder(out) as folder:
            atomic_write_text(folder / "junit.xml", to_junit(report, verdict))
            atomic_write_text(folder / "verdict.md", verdict_markdown(verdict) + "\n")
    consoles.out.print(render_verdict(verdict))
    _step_summary(verdict_markdown(verdict))
    if not verdict["passed"]:
        consoles.note(f"failed: {', '.join(verdict['failed_checks'])}")
    return 0 if verdict["passed"] or exit_zero else EXIT_GATE_FAILED


@report_app.command("show")
def show(report_file: Annotated[Path, typer.Argument(help="A report.json written by auditnn.")]) -> None:
    """Print a report's tables, verdict and warnings."""
    consoles = Consoles()
    report = load_report(report_file)
    for table in report_tables(report):
        consoles.out.print(render_table(table))
    if "verdict" in report.results:
        consoles.out.print(render_verdict(report.results["verdict"]))
    for warning in report.warnings:
        consoles.out.print(f"[bold yellow]warning[/] {warning['code']}: {warning['message']}")


@report_app.command("html")
def html(
    report_file: Annotated[Path, typer.Argument(help="A report.json written by auditnn.")],
    out: Annotated[Optional[Path], typer.Option(help="The HTML file (default: report.html beside the report).")] = None,
) -> None:
    """Render the self-contained HTML page (pictures embedded) for a report."""
    report = load_report(report_file)
    target = out or report_file.parent / "report.html"
    atomic_write_text(target, to_html(report, load_pictures(report, report_file.parent)))
    Consoles().out.print(f"HTML report written to {target}", markup=False)
