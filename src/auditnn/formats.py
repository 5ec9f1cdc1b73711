"""Readers for files that must not run code: safetensors (a JSON header and raw bytes), NumPy .npz, and the
pre-check that keeps a torch.export archive's pickled members away from torch's full unpickler."""

from __future__ import annotations

import io
import json
import math
import re
import stat
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import AuditError

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER = 100 * 1024 * 1024  # the format's own limit on the JSON header, in bytes


def regular_file(path: str | Path, what: str, hint: str) -> Path:
    """`path` if it is a regular file; else an AuditError saying what it is instead (missing, a folder, a FIFO or
    a device, which would block or never end if read) and `hint`, what to give."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AuditError(f"{what} '{path}' does not exist; {hint}") from None
    except OSError as exc:
        raise AuditError(f"{what} '{path}' cannot be read ({exc.strerror or exc}); {hint}") from None
    if stat.S_ISDIR(mode):
        raise AuditError(f"{what} '{path}' is a directory; {hint}")
    if not stat.S_ISREG(mode):
        raise AuditError(f"{what} '{path}' is not a regular file (a FIFO, socket or device); {hint}")
    return path


def load_failure(exc: Exception) -> str:
    """Why torch.load failed, in one line. For a refused pickle, the global it refused: torch's own text goes on
    to advise re-running with weights_only=False, which auditnn never suggests."""
    text = str(exc).strip()
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"it would load {refused.group(1)}, which the weights-only unpickler refuses"
    if "Weights only load failed" in text:
        return "it holds objects that the weights-only unpickler refuses"
    return text.splitlines()[0] if text else type(exc).__name__


def read_bytes(path: Path, what: str, hint: str) -> bytes:
    try:
        return regular_file(path, what, hint).read_bytes()
    except OSError as exc:
        raise AuditError(f"{what} '{path}' cannot be read ({exc.strerror or exc}); {hint}") from None


def read_safetensors(path: str | Path, what: str = "file") -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file: an 8-byte little-endian header length, a JSON object naming each tensor's
    dtype, shape and byte range, then the raw bytes, the ranges tiling them in order. Nothing in it is executed."""
    path = Path(path)
    raw = read_bytes(path, what, "give an existing .safetensors file")
    try:
        if len(raw) < 8:
            raise ValueError("shorter than its 8-byte header length")
        (size,) = struct.unpack("<Q", raw[:8])
        if size > MAX_HEADER or 8 + size > len(raw):
            raise ValueError(f"header length {size} does not fit the file of {len(raw)} bytes")
        try:
            header = json.loads(raw[8 : 8 + size].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"header is not UTF-8 text ({exc})") from None
        if not isinstance(header, dict):
            raise ValueError(f"header is not a JSON object but a {type(header).__name__}")
        body = memoryview(raw)[8 + size :]
        tensors, ranges = {}, []
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            tensors[name], begin, end = _safetensor(name, spec, body)
            ranges.append((begin, end, name))
        _check_tiling(sorted(ranges), len(body))
    except ValueError as exc:  # json.JSONDecodeError is one
        raise AuditError(f"{what} '{path}' is not a valid safetensors file ({exc})") from None
    return tensors


def _safetensor(name: str, spec: object, body: memoryview) -> tuple[torch.Tensor, int, int]:
    if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= spec.keys():
        raise ValueError(f"tensor '{name}' lacks its dtype, shape or data_offsets")
    dtype = _SAFETENSORS_DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"tensor '{name}' has dtype {spec['dtype']!r}; allowed: {', '.join(_SAFETENSORS_DTYPES)}")
    shape, offsets = spec["shape"], spec["data_offsets"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"tensor '{name}' has shape {shape}; allowed: a list of integers >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise ValueError(f"tensor '{name}' has data_offsets {offsets!r}; allowed: [begin, end] in bytes")
    if math.prod(max(d, 1) for d in shape) >= 2**63:  # torch counts elements in int64, zero-size dims or not
        raise ValueError(f"tensor '{name}' has shape {shape}, too large for any tensor")
    begin, end = offsets
    count = math.prod(shape)  # Python integers: dimensions like 2**32 x 2**32 cannot wrap around to a small count
    if not 0 <= begin <= end <= len(body) or end - begin != count * torch.empty((), dtype=dtype).element_size():
        raise ValueError(
            f"tensor '{name}' has byte range {begin}..{end}, which does not fit its shape {shape} "
            f"in a body of {len(body)} bytes"
        )
    flat = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype) if count else torch.empty(0, dtype=dtype)
    return flat.reshape(shape), begin, end


def _check_tiling(ranges: list[tuple[int, int, str]], body_size: int) -> None:
    """The format's rule: byte ranges follow each other without gap or overlap and end where the file ends."""
    position = 0
    for begin, end, name in ranges:
        if begin < position:
            raise ValueError(
                f"tensor '{name}' at bytes {begin}..{end} overlaps the previous tensor, which ends at {position}"
            )
        if begin > position:
            raise ValueError(f"a gap of bytes {position}..{begin} before tensor '{name}'")
        position = end
    if position != body_size:
        raise ValueError(f"the tensors end at byte {position} but the body has {body_size} bytes")


def read_npz(path: str | Path, what: str = "file") -> dict[str, np.ndarray]:
    """Arrays from a .npz file, with pickled objects refused (allow_pickle=False)."""
    path = Path(path)
    raw = read_bytes(path, what, "give an existing .npz file")
    if raw[:2] != b"PK":  # numpy would take any other content for a pickle and say so
        raise AuditError(
            f"{what} '{path}' cannot be read as .npz (not a zip archive); give a file written by numpy.savez"
        )
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():  # numpy's message goes on to suggest loading it unsafely: never do that
            raise AuditError(
                f"{what} '{path}' holds pickled (object) arrays, which could run code: refused; "
                "allowed: .npz of numeric or string arrays"
            ) from None
        raise AuditError(f"{what} '{path}' cannot be read as .npz ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc) or type(exc).__name__
        raise AuditError(f"{what} '{path}' cannot be read as .npz (a corrupt or truncated zip: {reason})") from None


# ---------------------------------------------------------------- torch.export archives

# What torch.export.save writes for one program with plain tensor weights, relative to the archive's top folder; each
# name is matched exactly. torch.export.load loads every models/<name>.json (and returns the one named 'model'), and
# for each <name> reads data/weights/<name>.pt or data/constants/<name>.pt, when present, as a legacy pickled state
# dict that falls back to torch's full unpickler (torch/export/pt2_archive/_package.py _load_state_dict,
# _load_constants; torch/_export/serde/serialize.py deserialize_torch_artifact). So the one program allowed is
# 'model', and a blob is only weight_<n> or tensor_<n> listed in its folder's config. Everything else (AOTInductor
# libraries, pickled custom or opaque objects, the legacy layouts, other programs) is refused.
_EXPORT_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_EXPORT_FIXED = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    "models/model.json",
    _EXPORT_SAMPLE_INPUTS,
}
# (blob folder, its config, the blob names torch.export.save writes there)
_EXPORT_BLOBS = (
    ("data/weights/", "data/weights/model_weights_config.json", re.compile(r"weight_\d+")),
    ("data/constants/", "data/constants/model_constants_config.json", re.compile(r"tensor_\d+")),
)


def check_export_archive(raw: bytes, path: str | Path) -> None:
    """Refuse a torch.export archive whose loading would unpickle with torch's full unpickler: weights or constants
    flagged use_pickle, custom/opaque object constants, legacy .pt members, a second program, sample inputs that are
    not plain tensors. torch.export.load is then given these same bytes, so what was checked is what it reads."""

    def refuse(reason: str) -> AuditError:
        return AuditError(
            f"export file '{path}' {reason}: refused, since loading it could run code; "
            "allowed: one program ('models/model.json') saved by torch.export.save with plain tensor "
            "weights"
        )

    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise AuditError(
            f"export file '{path}' is not a torch.export archive ({str(exc) or type(exc).__name__}); "
            "give a file written by torch.export.save"
        ) from None
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise AuditError(
            f"export file '{path}' is not a torch.export archive (members {sorted(names)[:3]} are not "
            "under one top folder); give a file written by torch.export.save"
        )
    if len({name.lower() for name in names}) != len(names):
        # the zip reader checked here and torch's may pick different members of one name (torch's ignores case)
        raise refuse("holds two members of one name")
    members = {name.split("/", 1)[1]: name for name in names}
    programs = sorted(member for member in members if member.startswith("models/"))
    if programs != ["models/model.json"]:
        raise refuse(f"holds programs {programs} (torch loads each, reading its own weights files)")
    try:
        listed = {
            config: _check_payload_config(config, json.loads(archive.read(members[config])), pattern, refuse)
            for _, config, pattern in _EXPORT_BLOBS
            if config in members
        }
        blobs = {folder + name for folder, config, _ in _EXPORT_BLOBS for name in listed.get(config, ())}
        for member, full in members.items():
            if not (member in _EXPORT_FIXED or member in listed or member in blobs or member.startswith("extra/")):
                raise refuse(f"holds member '{member}', which torch.export.save does not write for plain tensors")
            if member == _EXPORT_SAMPLE_INPUTS and (data := archive.read(full)):
                torch.load(io.BytesIO(data), weights_only=True)  # torch's first call; an empty file it never unpickles
    except AuditError:
        raise
    except Exception as exc:  # zip, JSON and the weights-only unpickler each raise their own types
        raise refuse(f"cannot be checked ({load_failure(exc)})") from None


def _check_payload_config(
    member: str, config: object, pattern: re.Pattern[str], refuse: Callable[[str], AuditError]
) -> set[str]:
    """The blob names a weights or constants config lists, each a plain tensor stored as raw bytes."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise refuse(f"has a malformed '{member}'")
    for name, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            raise refuse(f"stores '{name}' as a pickle (use_pickle in '{member}')")
        if not pattern.fullmatch(str(entry.get("path_name", ""))):
            raise refuse(f"stores '{name}' as an object ('{entry.get('path_name')}' in '{member}')")
    return {entry["path_name"] for entry in entries.values()}
