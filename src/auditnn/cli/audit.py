"""auditnn audit: run every check of an audit file, write the report, print the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..plan import load_plan
from .common import Consoles
from .run import run_and_render


def audit(
    file: Annotated[Path, typer.Argument(help="The audit file (TOML): model, data and checks with thresholds.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: reports/<run-id>/).")] = None,
    exit_zero: Annotated[bool, typer.Option(help="Report failing checks but exit 0.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Reuse the results of checks the --out folder's earlier run measured "
            "with the same settings, model and data."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")] = False,
) -> int:
    """Run every check of an audit file, write the report, print the verdict; exit 1 when a check fails."""
    return run_and_render(load_plan(file), out, Consoles(quiet), file.stem, exit_zero=exit_zero, resume=resume)
