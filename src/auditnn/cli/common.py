"""What every command shares: the consoles, run folders, progress rendering and table rendering."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable
from rich.text import Text

from ..report.tables import Table


class Consoles:
    """stdout carries tables (and JSON); stderr carries progress and messages. Both honour NO_COLOR."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.out = Console(highlight=False, soft_wrap=False)
        self.err = Console(stderr=True, highlight=False)

    def note(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, markup=False)


def run_id(command: str, detail: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{command}-{detail}-{stamp}")


def output_dir(out: Path | None, rid: str) -> Path:
    return out if out is not None else Path("reports") / rid


def render_table(table: Table) -> RichTable:
    """Titles and cells hold user text (class and check names): shown literally, never read as rich markup."""
    rich_table = RichTable(title=Text(table.title), title_justify="left", header_style="bold")
    for column in table.columns:
        rich_table.add_column(Text(column), overflow="fold")
    for row in table.rows:
        rich_table.add_row(*(Text(cell) for cell in row))
    return rich_table


@contextmanager
def epoch_progress(consoles: Consoles, label: str) -> Iterator[Callable[[str, int, int, dict], None]]:
    """Yields update(task_name, epoch, epochs, row): one bar per task, on stderr, silent with --quiet."""
    if consoles.quiet or os.environ.get("AUDITNN_NO_PROGRESS"):
        yield lambda *args: None
        return
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=consoles.err,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def update(name: str, epoch: int, epochs: int, row: dict) -> None:
        if name not in tasks:
            tasks[name] = bars.add_task(f"{label} {name}", total=epochs, info="")
        info = f"loss {row['loss']:.3f} · train acc {row['train_accuracy']:.3f}"
        if "val_accuracy" in row:
            info += f" · val acc {row['val_accuracy']:.3f}"
        bars.update(tasks[name], completed=epoch, info=info)

    with bars:
        yield update
