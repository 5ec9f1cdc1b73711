"""Run a plan and render what it measured: the one path every measuring command takes (a command only builds its
plan). Output folder staged and committed whole, progress on stderr, tables and the verdict on stdout."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from ..checkpoint import partial_root
from ..checks import CheckResult
from ..errors import AuditError, Interrupted
from ..io import OUTPUT_MARKER, staged_folder
from ..plan import Plan
from ..report.tables import bound_symbol, fmt, report_tables
from ..report.writers import verdict_markdown
from ..runner import read_records, run_plan, write_outcome
from ..runtime import environment, is_main_process, resolve_device
from . import EXIT_GATE_FAILED, EXIT_OK
from .common import Consoles, epoch_progress, output_dir, render_table, run_id


def render_verdict(verdict: dict[str, Any]) -> RichTable:
    """The verdict as a rich table; check names and notes are user text, shown literally (never read as markup)."""
    status = "[bold green]PASS[/]" if verdict["passed"] else "[bold red]FAIL[/]"
    table = RichTable(title=f"Verdict: {status}", title_justify="left", header_style="bold")
    for column in ("check", "metric", "measured", "threshold", "result"):
        table.add_column(column, overflow="fold")
    for r in verdict["rows"]:
        result = Text.from_markup("[green]pass[/]" if r["passed"] else "[red]FAIL[/]")
        if r["note"]:
            result.append(f" ({r['note']})")
        table.add_row(
            Text(r["check"]),
            Text(r["metric"]),
            fmt(r["measured"]),
            Text(f"{bound_symbol(r['bound'])} {fmt(r['threshold'])}"),
            result,
        )
    return table


def print_warnings(console: Console, warnings: list[dict[str, str]]) -> None:
    for warning in warnings:
        console.print(Text.assemble(("warning", "bold yellow"), f" {warning['code']}: {warning['message']}"))


def step_summary(consoles: Consoles, markdown: str) -> None:
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
        consoles.err.print(
            f"warning: $GITHUB_STEP_SUMMARY '{target}' cannot be written ({exc.strerror or exc}); "
            "the verdict is in the report",
            markup=False,
            soft_wrap=True,
        )


def _skipped_files(results: dict[str, Any]) -> int:
    """Non-image files the subject's image folder held (skipped without --strict), as its data records them."""
    for section in results.values():
        data = section.get("data") if isinstance(section, dict) else None
        if isinstance(data, dict) and data.get("skipped_files"):
            return int(data["skipped_files"])
    return 0


def _earlier_records(out: Path | None) -> dict[str, tuple[str, CheckResult]]:
    """The per-check records of the run whose output folder --resume names: a complete run's records, or none for
    a run that was interrupted before it wrote its report (its saved batches are taken up by the checks)."""
    if out is None:
        raise AuditError("--resume needs --out FOLDER: the output folder of the earlier run to continue")
    if (out / OUTPUT_MARKER).is_file() and (out / "report.json").is_file():
        return read_records(out)
    if not out.exists() and partial_root(out).is_dir():
        return {}
    raise AuditError(
        f"--resume folder '{out}' is neither a complete auditnn output folder nor the --out of an interrupted run; "
        "allowed: the --out folder of an earlier auditnn run"
    )


def run_and_render(
    plan: Plan, out: Path | None, consoles: Consoles, detail: str, *, exit_zero: bool = False, resume: bool = False
) -> int:
    """Measure the plan into the output folder (default reports/<run id>/), print its tables, verdict and
    warnings; return the exit code: 1 when a check of the plan failed (0 with exit_zero), else 0. With resume,
    the checks whose records the folder already holds are not measured again."""
    device = resolve_device(plan.device)
    rid = run_id(plan.command, detail)
    out_dir = output_dir(out, rid)
    reuse = _earlier_records(out) if resume else None
    partial = partial_root(out_dir)
    try:
        with staged_folder(out_dir) as staging:
            with epoch_progress(consoles, f"training {plan.subject.model.text} ({device})") as update:
                outcome = run_plan(
                    plan,
                    run_id=rid,
                    environment=environment(device),
                    out_dir=out_dir,
                    progress=update,
                    reuse=reuse,
                    partial=partial,
                    resume=resume,
                )
            written = write_outcome(outcome, staging)
    except Interrupted as exc:
        if any(partial.glob("*/batch-*.pt")):
            exc.left += f"; the batches finished are kept: the same command with --resume --out {out_dir} goes on"
        raise
    if is_main_process():  # the run is whole: the batches an interruption would have resumed from can go
        shutil.rmtree(partial, ignore_errors=True)
    report = outcome.report
    for table in report_tables(report):
        consoles.out.print(render_table(table))
    if outcome.verdict is not None:
        consoles.out.print(render_verdict(outcome.verdict.to_dict()))
    print_warnings(consoles.err, report.warnings)
    if outcome.verdict is not None:
        step_summary(consoles, verdict_markdown(outcome.verdict.to_dict()))
    skipped = _skipped_files(report.results)
    if skipped:
        consoles.note(f"{skipped} non-image file(s) in the folder were skipped (--strict makes them an error)")
    if resume:
        consoles.note(f"reused {outcome.reused} of {len(plan.checks)} check(s) measured by the earlier run")
    consoles.note(f"report written to {out_dir}/ ({', '.join(written)}) in {report.timings['total']:.1f} s")
    if outcome.verdict is None or outcome.verdict.passed:
        return EXIT_OK
    consoles.note(f"failed: {', '.join(outcome.verdict.failed_checks())}")
    return EXIT_OK if exit_zero else EXIT_GATE_FAILED
