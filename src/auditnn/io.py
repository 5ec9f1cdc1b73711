"""Atomic file writes, output folders that appear whole or not at all, and checksums: an interrupted run never
leaves a half-written file or folder."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from .errors import AuditError, Interrupted
from .formats import load_failure, regular_file
from .interrupts import deferred
from .runtime import is_main_process

# The file staged_folder puts in every output folder it writes. Names alone cannot tell auditnn's folder from a
# user's (a user's own model.pt or models/), so only a folder holding this file may be replaced as a whole.
OUTPUT_MARKER = ".auditnn-output"
MARKER_TEXT = "Written by auditnn. A rerun with this folder as --out replaces the whole folder.\n"

# Every name auditnn writes at the top of an output folder: report/writers.py, attacks/audit.py (patch.*), the
# shortcut command (models/), models/load.py (a model folder), data/controlled.py (a dataset folder), and the
# marker. A folder that holds the marker and only these was written by an earlier run and may be replaced as a
# whole; any other folder is refused rather than removed.
OUTPUT_NAMES = frozenset(
    {
        "report.json",
        "report.html",
        "metrics.csv",
        "summary.md",
        "junit.xml",
        "pictures.pt",
        "patch.png",
        "patch.pt",
        "models",
        "checks",
        "model.pt",
        "model.json",
        "manifest.json",
        "train.pt",
        "val.pt",
        "test.pt",
        "test_clean.pt",
        OUTPUT_MARKER,
    }
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, *, every_process: bool = False) -> Path:
    """Write `data` to a temporary file in the same folder, then rename it over `path`. Under torchrun only the
    first process writes (the others computed the same gathered numbers), unless `every_process`: a file of this
    process's own share (its batches)."""
    path = Path(path)
    if not is_main_process() and not every_process:
        return path
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise AuditError(
            f"'{path}' cannot be written ({exc.strerror or exc}); give a path in a folder you can write to"
        ) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def tensors_to_bytes(tensors: dict[str, Any]) -> bytes:
    """Serialize a dict of tensors (and plain values) so that torch.load(weights_only=True) reads it back."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def atomic_torch_save(path: str | Path, tensors: dict[str, Any], *, every_process: bool = False) -> Path:
    return atomic_write_bytes(path, tensors_to_bytes(tensors), every_process=every_process)


def safe_torch_load(path: str | Path, what: str) -> Any:
    """torch.load restricted to tensors and plain containers; a pickle that would run code is refused."""
    path = regular_file(path, what, "give an existing file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or zip errors
        raise AuditError(
            f"{what} '{path}' cannot be read safely ({load_failure(exc)}); "
            "allowed: files of tensors written by torch.save (loaded with weights_only=True)"
        ) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` if needed and prove it is writable, before any expensive work starts."""
    path = Path(path)
    if os.path.exists(path) and not os.path.isdir(path):  # os.path: False, not OSError, for a name too long
        raise AuditError(f"{what} '{path}' is a file; give a folder that can be created or written")
    if not is_main_process():
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise AuditError(
            f"{what} '{path}' cannot be written ({exc.strerror or exc}); give a folder you can write to"
        ) from None
    return path


def check_new_folder(path: str | Path, flag: str) -> Path:
    """A folder a run will fill with files of its own: it may not exist yet, or be empty; anything else is refused
    (a file, or a folder holding files another run or the user left: they would be mixed with this run's)."""
    path = Path(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise AuditError(f"{flag} '{path}' is a file; allowed: a new or empty folder")
    if os.path.isdir(path):
        try:
            entries = sorted(os.listdir(path))
        except OSError as exc:
            raise AuditError(
                f"{flag} '{path}' cannot be read ({exc.strerror or exc}); allowed: a new or empty folder"
            ) from None
        if entries:
            raise AuditError(
                f"{flag} '{path}' is not empty ({len(entries)} entries, e.g. '{entries[0]}'); "
                "allowed: a new or empty folder"
            )
    return path


@contextmanager
def output_folder(path: str | Path, what: str = "output folder") -> Iterator[Path]:
    """prepare_output_dir, and if the work inside fails before writing anything, remove the folders it created."""
    path = Path(path)
    created = [p for p in [path, *path.parents] if not os.path.exists(p)]  # a name too long counts: mkdir names it
    prepare_output_dir(path, what)
    try:
        yield path
    except BaseException:
        for folder in created:  # deepest first; stops at the first that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def sibling(path: str | Path, kind: str) -> Path:
    """The hidden file or folder beside output folder `path` that a run uses while it writes: "lock" (the lock
    file), "new" (prefix of the staging folders), "old" (prefix of an earlier folder set aside). Named after `path`,
    cut to 64 characters plus a hash that tells long names apart, so that it fits where `path` fits."""
    path = Path(path)
    digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:8]
    return path.parent / f".{path.name[:64]}.{digest}.auditnn-{kind}"


@contextmanager
def staged_folder(path: str | Path, what: str = "output folder") -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; when the block ends without error, one rename makes it `path`
    (a folder of an earlier run is set aside first and removed after). On an error or an interrupt the staging folder
    is removed and `path` is as it was: absent, empty or the earlier run's files, never a mix of two runs.

    A lock file beside `path` keeps a second run off the same folder (AuditError naming the first run's pid). The
    kernel drops the lock when its process dies, so the next run takes over a killed run's lock and removes its
    staging folder. The staging folder starts with OUTPUT_MARKER in it; an existing folder that lacks the marker or
    holds entries auditnn does not write (OUTPUT_NAMES) is refused, never removed. Under torchrun the other
    processes write nothing: they get a private temporary folder."""
    shown = Path(path)
    if not is_main_process():  # its writes are no-ops, but a folder it makes would land in the commit's way
        with tempfile.TemporaryDirectory(prefix="auditnn-rank-") as scratch:
            yield Path(scratch)
        return
    target = shown
    created: list[Path] = []
    lock: int | None = None
    made_target = False
    staging: Path | None = None

    def undo() -> None:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if made_target:
            with suppress(OSError):  # not empty: someone else wrote there meanwhile; theirs stays
                target.rmdir()
        if lock is not None:
            _release_lock(target, lock)
        for folder in created:  # deepest first; stops at the first that is not empty
            try:
                folder.rmdir()
            except OSError:
                break

    earlier = False
    try:
        with deferred():
            target = Path(os.path.realpath(shown))  # through a symlink: the folder it names is replaced, not the link
            if target.exists() and not target.is_dir():
                raise AuditError(f"{what} '{shown}' is a file; give a folder that can be created or written")
            if os.path.ismount(target) or target in (Path.cwd(), *Path.cwd().parents):
                raise AuditError(
                    f"{what} '{shown}' is a mount point or holds the working folder: the finished folder "
                    "could not be renamed into its place; give a new folder inside it"
                )
            created = [p for p in target.parents if not p.exists()]
            target.parent.mkdir(parents=True, exist_ok=True)
            lock = _take_lock(target, shown, what)
            _remove_stale(target)
            earlier = _earlier_run(target, shown, what)
            if not target.exists():
                target.mkdir()  # proves the name is allowed here, before any work; the commit replaces it
                made_target = True
            staging = Path(tempfile.mkdtemp(prefix=sibling(target, "new").name + "-", dir=target.parent))
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes folders private; give the mode a plain mkdir would
            (staging / OUTPUT_MARKER).write_text(MARKER_TEXT)
    except OSError as exc:
        with deferred():
            undo()
        raise AuditError(
            f"{what} '{shown}' cannot be written ({exc.strerror or exc}); give a folder you can write to"
        ) from None
    except BaseException:
        with deferred():
            undo()
        raise
    unchanged = f"'{shown}' keeps the earlier run's files" if earlier else f"nothing was written to '{shown}'"
    try:
        yield staging
    except BaseException:
        with _interrupt_says(unchanged):
            undo()
            raise
    with _interrupt_says(f"the {what} '{shown}' was written in full"):
        try:
            _commit(staging, target, earlier)
        except BaseException:
            undo()
            raise
        _release_lock(target, lock)


@contextmanager
def _interrupt_says(left: str) -> Iterator[None]:
    """Run the block with signals deferred; an Interrupted coming out of it (raised inside, or a signal that
    arrived meanwhile) says what was left on disk."""
    try:
        with deferred():
            yield
    except Interrupted as exc:
        exc.left = left
        raise


def _take_lock(target: Path, shown: Path, what: str) -> int:
    """flock on the lock file beside `target`; the file holds the holder's pid for the message a second run shows."""
    lock = sibling(target, "lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise AuditError(
                f"{what} '{shown}' is being written by another auditnn run (pid {holder}); "
                "wait for it to end or give another folder"
            ) from None
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: lock the new file
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _release_lock(target: Path, fd: int) -> None:
    sibling(target, "lock").unlink(missing_ok=True)  # before closing: a waiting run then retries on a new file
    os.close(fd)


def _earlier_run(target: Path, shown: Path, what: str) -> bool:
    """True when `target` holds an earlier run's files (to be replaced as a whole); AuditError when it holds
    anything else, or lacks the marker that says auditnn wrote it."""
    if not target.exists():
        return False
    entries = sorted(p.name for p in target.iterdir())
    foreign = [name for name in entries if name not in OUTPUT_NAMES]
    if foreign:
        raise AuditError(
            f"{what} '{shown}' holds '{foreign[0]}', which auditnn does not write; give a new or empty "
            "folder (one from an earlier auditnn run is replaced as a whole)"
        )
    if entries and not (target / OUTPUT_MARKER).is_file():
        raise AuditError(
            f"{what} '{shown}' was not written by auditnn (it has no {OUTPUT_MARKER} file) and is left "
            "alone; give a new or empty folder (an older auditnn wrote no marker either: remove it first)"
        )
    return bool(entries)


def _remove_stale(target: Path) -> None:
    """With the lock held, other staging folders of `target` belong to killed runs. An earlier folder set aside
    by a run killed between its two renames goes back in place when `target` is missing."""
    for stale in target.parent.glob(glob.escape(sibling(target, "new").name) + "-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in target.parent.glob(glob.escape(sibling(target, "old").name) + "-*"):
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, target)


def _commit(staging: Path, target: Path, earlier: bool) -> None:
    """Make `staging` the folder `target`. An empty `target` is replaced by the one rename. An earlier run's
    folder is first renamed aside: a crash between the two renames leaves it there, for the next run to put back."""
    if not earlier:
        os.rename(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=sibling(target, "old").name + "-", dir=target.parent))
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old)


def read_json(path: str | Path, what: str, hint: str) -> Any:
    """A JSON file, or an AuditError naming it: missing or not a regular file (with `hint`, what to give instead),
    or malformed."""
    path = regular_file(path, what, hint)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"{what} '{path}' is not valid JSON ({exc})") from None
