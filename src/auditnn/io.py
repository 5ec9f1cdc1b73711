"""Atomic file writes and checksums: an interrupted run never leaves a half-written file."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import AuditError
from .formats import load_failure, regular_file
from .runtime import is_main_process


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary file in the same folder, then rename it over `path`. Under torchrun only the
    first process writes: the others computed the same gathered numbers."""
    path = Path(path)
    if not is_main_process():
        return path
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise AuditError(f"'{path}' cannot be written ({exc.strerror or exc}); give a path in a folder you can write to") from None
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


def atomic_torch_save(path: str | Path, tensors: dict[str, Any]) -> Path:
    return atomic_write_bytes(path, tensors_to_bytes(tensors))


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
    if path.exists() and not path.is_dir():
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


@contextmanager
def output_folder(path: str | Path, what: str = "output folder") -> Iterator[Path]:
    """prepare_output_dir, and if the work inside fails before writing anything, remove the folders it created."""
    path = Path(path)
    created = [p for p in [path, *path.parents] if not p.exists()]
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


def read_json(path: str | Path, what: str, hint: str) -> Any:
    """A JSON file, or an AuditError naming it: missing (with `hint`, what to give instead) or malformed."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"{what} '{path}' does not exist; {hint}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"{what} '{path}' is not valid JSON ({exc})") from None
