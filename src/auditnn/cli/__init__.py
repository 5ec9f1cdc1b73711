"""The command line: parse, call one library function, render. The only place that imports typer or rich.

This module stays light: main() installs the SIGINT/SIGTERM handlers first and only then imports the commands (and
with them torch, which takes seconds), so that Ctrl-C at any moment is an interrupt with one line, not a traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback

from ..errors import AuditError, Interrupted
from ..interrupts import handled

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's code for a Ctrl-C; SIGTERM gives 143 (128 + 15)


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
    no traceback), 3 internal error, 130 interrupted by SIGINT, 143 by SIGTERM (the output folder is then absent,
    as it was before the run, or complete: see io.staged_folder)."""
    args = sys.argv[1:] if argv is None else argv
    with handled():
        try:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                return _main_distributed(args)
            return _run(args)
        except Interrupted as exc:
            _error(f"interrupted by {signal.Signals(exc.signum).name}; {exc.left}")
            return 128 + exc.signum


def _main_distributed(args: list[str]) -> int:
    """Under torchrun: join the process group; only the first process prints (every file write is its alone)."""
    from ..runtime import finish_distributed, init_distributed, is_main_process

    device = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--device"), "auto")
    init_distributed(device)
    if is_main_process():
        code = _run(args)
    else:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            code = _run(args)
    if code in (EXIT_OK, EXIT_GATE_FAILED):  # this process completed its part: leave the group cleanly
        finish_distributed()
    return code


def _run(args: list[str]) -> int:
    import typer

    from .app import app

    try:
        result = app(args=args, prog_name="auditnn", standalone_mode=False)
    except typer.Exit as exc:
        result = exc.exit_code
    except typer.Abort as exc:  # click turns an EOFError (a truncated file, a user's input()) into Abort
        return _failed(exc.__cause__ or exc)
    except typer.TyperException as exc:  # typer's usage errors: unknown option, bad type, missing value
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command group: show its help
            print(exc.format_message())
            return EXIT_OK
        _error(_with_bad_value(exc.format_message(), getattr(exc, "param", None), args))
        return EXIT_USAGE
    except Exception as exc:
        return _failed(exc)
    if result == EXIT_INTERRUPTED:  # typer's answer to a KeyboardInterrupt raised by code, not by our handler
        _error("interrupted; no partial report was left")
    return result if isinstance(result, int) else EXIT_OK


def _failed(exc: BaseException) -> int:
    """Bad input exits 2 with its one line; anything else is an internal error: exit 3 with one line (the
    traceback on request)."""
    if isinstance(exc, AuditError):
        _error(str(exc))
        return EXIT_USAGE
    if os.environ.get("AUDITNN_DEBUG"):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    _error(f"internal error: {type(exc).__name__}: {exc} (set AUDITNN_DEBUG=1 for the traceback)")
    return EXIT_INTERNAL
