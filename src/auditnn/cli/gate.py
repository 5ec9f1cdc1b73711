"""auditnn audit, auditnn gate and auditnn report: the CI gate and the report viewers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from ..audit import run_audit
from ..errors import AuditError
from ..gate import judge, load_policy
from ..io import atomic_write_text, output_folder, staged_folder
from ..report.html import to_html
from ..report.schema import load_report
from ..report.tables import bound_symbol, fmt, report_tables
from ..report.writers import load_pictures, to_junit, verdict_markdown, write_report
from ..runtime import environment, resolve_device
from .common import Consoles, epoch_progress, output_dir, render_table, run_id

EXIT_GATE_FAILED = 1
DEFAULT_MAX_DROP = 0.02  # the most a gated share may worsen against the baseline, in [0, 1]
report_app = typer.Typer(help="Show or render an existing report.", no_args_is_help=True, add_completion=False)


def render_verdict(verdict: dict) -> RichTable:
    """The verdict as a rich table; check names and notes are user text, shown literally (never read as markup)."""
    status = "[bold green]PASS[/]" if verdict["passed"] else "[bold red]FAIL[/]"
    table = RichTable(title=f"Verdict: {status}", title_justify="left", header_style="bold")
    for column in ("check", "metric", "measured", "threshold", "result"):
        table.add_column(column, overflow="fold")
    for r in verdict["rows"]:
        result = Text.from_markup("[green]pass[/]" if r["passed"] else "[red]FAIL[/]")
        if r["note"]:
            result.append(f" ({r['note']})")
        table.add_row(Text(r["check"]), Text(r["metric"]), fmt(r["measured"]),
                      Text(f"{bound_symbol(r['bound'])} {fmt(r['threshold'])}"), result)
    return table


def _print_warnings(console: Console, warnings: list[dict[str, str]]) -> None:
    for warning in warnings:
        console.print(Text.assemble(("warning", "bold yellow"), f" {warning['code']}: {warning['message']}"))


def _step_summary(consoles: Consoles, markdown: str) -> None:
    """GitHub Actions shows what is appended to $GITHUB_STEP_SUMMARY on the run's page. A summary that cannot be
    written is a warning, not an error: the report is written and the exit code must stay the verdict's (exit 2
    would turn a failing gate into 'bad input' and a passing one into a failure over a convenience copy)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    try:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")
    except OSError as exc:
        consoles.err.print(f"warning: $GITHUB_STEP_SUMMARY '{target}' cannot be written ({exc.strerror or exc}); "
                           "the verdict is in the report", markup=False, soft_wrap=True)


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
    _print_warnings(consoles.err, report.warnings)
    _step_summary(consoles, verdict_markdown(verdict.to_dict()))
    consoles.note(f"report written to {out_dir}/ (report.json, report.html, junit.xml, metrics.csv, summary.md)")
    if not verdict.passed:
        consoles.note(f"failed: {', '.join(verdict.failed_checks())}")
    return 0 if verdict.passed or exit_zero else EXIT_GATE_FAILED


def gate(
    report_file: Annotated[Path, typer.Argument(help="A report.json written by auditnn.")],
    policy: Annotated[Path, typer.Option(help="The audit file whose checks and thresholds judge the report.")],
    baseline: Annotated[Optional[Path], typer.Option(help="An older report.json (the main branch's, say) to compare with.")] = None,
    max_drop: Annotated[Optional[float], typer.Option(
        help=f"With --baseline: the most a gated metric may worsen (default {DEFAULT_MAX_DROP}).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for junit.xml and verdict.md.")] = None,
    exit_zero: Annotated[bool, typer.Option(help="Report failing checks but exit 0.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> int:
    """Re-judge an existing report against an audit file's thresholds (and a baseline), without recomputing."""
    consoles = Consoles(quiet)
    if max_drop is not None and baseline is None:
        raise AuditError(f"--max-drop {max_drop:g} needs --baseline; give --baseline REPORT.json or leave --max-drop out")
    rules = load_policy(policy)
    report = load_report(report_file)
    old = load_report(baseline) if baseline is not None else None
    drop = (DEFAULT_MAX_DROP if max_drop is None else max_drop) if old is not None else None
    verdict = judge(report, rules, baseline=old, max_drop=drop).to_dict()
    if out is not None:
        with output_folder(out) as folder:
            atomic_write_text(folder / "junit.xml", to_junit(report, verdict))
            atomic_write_text(folder / "verdict.md", verdict_markdown(verdict) + "\n")
    consoles.out.print(render_verdict(verdict))
    _step_summary(consoles, verdict_markdown(verdict))
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
    _print_warnings(consoles.out, report.warnings)


@report_app.command("html")
def html(
    report_file: Annotated[Path, typer.Argument(help="A report.json written by auditnn.")],
    out: Annotated[Optional[Path], typer.Option(help="The HTML file (default: report.html beside the report).")] = None,
) -> None:
    """Render the self-contained HTML page (pictures embedded) for a report."""
    report = load_report(report_file)
    target = out or report_file.parent / "report.html"
    if target.is_dir():
        raise AuditError(f"HTML file '{target}' is a folder; allowed: the path of the HTML file to write (--out FILE)")
    atomic_write_text(target, to_html(report, load_pictures(report, report_file.parent)))
    Consoles().out.print(f"HTML report written to {target}", markup=False)
