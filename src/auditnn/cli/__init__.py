"""The command line: parse, call one library function, render. The only place that imports typer or rich."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

import typer

from ..errors import AuditError
from . import attack as attack_cmd
from . import data as data_cmd
from . import gate as gate_cmd
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
app.command("audit")(gate_cmd.audit)
app.command("gate")(gate_cmd.gate)
app.add_typer(gate_cmd.report_app, name="report")
app.add_typer(data_cmd.app, name="data")

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _error(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"auditnn: error: {first}", file=sys.stderr)


def _with_bad_value(message: str, param: object, args: list[str]) -> str:
    """Typer's type errors name the option but not what was typed: add the value from the command line."""
    for opt in getattr(param, "opts", None) or []:
        for i, token in reversed(list(enumerate(args))):  # the last occurrence is the one that counts
            if token == opt and i + 1 < len(args):
                return f"{message} (got '{args[i + 1]}')"
            if token.startswith(opt + "="):
                return f"{message} (got '{token.split('=', 1)[1]}')"
    return message


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: 0 pass, 1 a gate check failed, 2 usage/config/input error (one line,
    no traceback), 3 internal error, 130 interrupted (nothing half-written: every file is written atomically)."""
    args = sys.argv[1:] if argv is None else argv
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _main_distributed(args)
    return _run(args)


def _main_distributed(args: list[str]) -> int:
    """Under torchrun: join the process group; only the first process prints (every file write is its alone)."""
    from ..runtime import init_distributed, is_main_process

    device = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--device"), "auto")
    init_distributed(device)
    if is_main_process():
        return _run(args)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return _run(args)


def _run(args: list[str]) -> int:
    try:
        result = app(args=args, prog_name="auditnn", standalone_mode=False)
    except typer.Exit as exc:
        result = exc.exit_code
    except typer.Abort:
        result = EXIT_INTERRUPTED
    except typer.TyperException as exc:  # typer's usage errors: unknown option, bad type, missing value
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command group: show its help
            print(exc.format_message())
            return EXIT_OK
        _error(_with_bad_value(exc.format_message(), getattr(exc, "param", None), args))
        return EXIT_USAGE
    except AuditError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        result = EXIT_INTERRUPTED
    except Exception as exc:  # the contract: an internal error exits 3 with one line (traceback on request)
        if os.environ.get("AUDITNN_DEBUG"):
            traceback.print_exc()
        _error(f"internal error: {type(exc).__name__}: {exc} (set AUDITNN_DEBUG=1 for the traceback)")
        return EXIT_INTERNAL
    if result == EXIT_INTERRUPTED:
        _error("interrupted; no partial report was written")
    return result if isinstance(result, int) else EXIT_OK
