"""auditnn gate and auditnn report: re-judge an existing report, and show or render one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import AuditError
from ..gate import judge
from ..io import atomic_write_text, output_folder
from ..plan import load_plan
from ..report.html import to_html
from ..report.schema import load_report
from ..report.tables import report_tables
from ..report.writers import load_pictures, to_junit, verdict_markdown
from . import EXIT_GATE_FAILED, EXIT_OK
from .common import Consoles, render_table
from .run import print_warnings, render_verdict, step_summary

DEFAULT_MAX_DROP = 0.02  # the most a gated share may worsen against the baseline, in [0, 1]
report_app = typer.Typer(help="Show or render an existing report.", no_args_is_help=True, add_completion=False)


def gate(
    report_file: Annotated[Path, typer.Argument(help="A report.json written by auditnn.")],
    policy: Annotated[Path, typer.Option(help="The audit file whose checks and thresholds judge the report.")],
    baseline: Annotated[
        Path | None, typer.Option(help="An older report.json (the main branch's, say) to compare with.")
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(help=f"With --baseline: the most a gated metric may worsen (default {DEFAULT_MAX_DROP})."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for junit.xml and verdict.md.")] = None,
    exit_zero: Annotated[bool, typer.Option(help="Report failing checks but exit 0.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> int:
    """Re-judge an existing report against an audit file's thresholds (and a baseline), without recomputing."""
    consoles = Consoles(quiet)
    if max_drop is not None and baseline is None:
        raise AuditError(
            f"--max-drop {max_drop:g} needs --baseline; give --baseline REPORT.json or leave --max-drop out"
        )
    rules = load_plan(policy)
    report = load_report(report_file)
    old = load_report(baseline) if baseline is not None else None
    drop = (DEFAULT_MAX_DROP if max_drop is None else max_drop) if old is not None else None
    verdict = judge(report, rules, baseline=old, max_drop=drop).to_dict()
    if out is not None:
        with output_folder(out) as folder:
            atomic_write_text(folder / "junit.xml", to_junit(report, verdict))
            atomic_write_text(folder / "verdict.md", verdict_markdown(verdict) + "\n")
    consoles.out.print(render_verdict(verdict))
    step_summary(consoles, verdict_markdown(verdict))
    if not verdict["passed"]:
        consoles.note(f"failed: {', '.join(verdict['failed_checks'])}")
    return EXIT_OK if verdict["passed"] or exit_zero else EXIT_GATE_FAILED


@report_app.command("show")
def show(report_file: Annotated[Path, typer.Argument(help="A report.json written by auditnn.")]) -> None:
    """Print a report's tables, verdict and warnings."""
    consoles = Consoles()
    report = load_report(report_file)
    for table in report_tables(report):
        consoles.out.print(render_table(table))
    if "verdict" in report.results:
        consoles.out.print(render_verdict(report.results["verdict"]))
    print_warnings(consoles.out, report.warnings)


@report_app.command("html")
def html(
    report_file: Annotated[Path, typer.Argument(help="A report.json written by auditnn.")],
    out: Annotated[Path | None, typer.Option(help="The HTML file (default: report.html beside the report).")] = None,
) -> None:
    """Render the self-contained HTML page (pictures embedded) for a report."""
    report = load_report(report_file)
    target = out or report_file.parent / "report.html"
    if target.is_dir():
        raise AuditError(f"HTML file '{target}' is a folder; allowed: the path of the HTML file to write (--out FILE)")
    atomic_write_text(target, to_html(report, load_pictures(report, report_file.parent)))
    Consoles().out.print(f"HTML report written to {target}", markup=False)
