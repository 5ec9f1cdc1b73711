"""The typer application: one command per module of this package. Importing it imports torch."""

from __future__ import annotations

import typer

from . import attack as attack_cmd
from . import audit as audit_cmd
from . import corrupt as corrupt_cmd
from . import data as data_cmd
from . import discover as discover_cmd
from . import gate as gate_cmd
from . import scan as scan_cmd
from . import shortcut as shortcut_cmd
from . import train as train_cmd

app = typer.Typer(
    name="auditnn",
    help="Audit PyTorch image classifiers for shortcut learning and adversarial fragility.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("shortcut")(shortcut_cmd.shortcut)
app.command("attack")(attack_cmd.attack)
app.command("train")(train_cmd.train)
app.command("corrupt")(corrupt_cmd.corrupt)
app.command("audit")(audit_cmd.audit)
app.command("gate")(gate_cmd.gate)
app.command("discover")(discover_cmd.discover)
app.command("scan")(scan_cmd.scan)
app.add_typer(gate_cmd.report_app, name="report")
app.add_typer(data_cmd.app, name="data")
