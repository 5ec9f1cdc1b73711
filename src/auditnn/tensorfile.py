"""Writing safetensors files, and reading them back with their metadata.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian unsigned header length N; N bytes of
JSON, an object mapping each tensor's name to {"dtype", "shape", "data_offsets": [begin, end]} (byte offsets into
the body) plus an optional "__metadata__" object of string values; then the body, every tensor's raw little-endian
bytes, C order, one after another without gaps. The header is padded with spaces to a multiple of 8 bytes so the
body starts aligned.

Why our own writer rather than the `safetensors` package: one small format with one writer (a retrained last
layer), and a reader that already exists here (formats.read_safetensors, which never executes anything and refuses
a malformed header); a dependency for ~40 lines is not worth its weight. The tests check a file byte by byte
against the specification, and against the package where it is installed."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import torch

from .errors import AuditError
from .formats import _SAFETENSORS_DTYPES, read_safetensors
from .io import atomic_write_bytes

DTYPE_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
ALIGN = 8  # bytes: the header is padded so the body starts at a multiple of this


def _raw(tensor: torch.Tensor) -> bytes:
    """The tensor's elements as little-endian bytes in C order."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise AuditError("safetensors are written on little-endian machines only; allowed: x86-64 or ARM64")
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _order(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The order of the body: the widest elements first, then by name (the reference writer's order, which keeps
    every tensor aligned to its element size)."""
    return sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))


def to_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding `tensors` (name -> tensor of a dtype the format names) and
    `metadata` (string -> string, stored as "__metadata__"). AuditError for a dtype, name or metadata value the
    format cannot hold."""
    header: dict[str, Any] = {}
    if metadata:
        bad = {k: v for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)}
        if bad:
            raise AuditError(f"metadata {bad!r} is not text; allowed: string keys and string values")
        header["__metadata__"] = dict(metadata)
    body, offset = [], 0
    for name in _order(tensors):
        tensor = tensors[name]
        if name == "__metadata__":
            raise AuditError("tensor name '__metadata__' is the header's own key; allowed: any other name")
        if tensor.dtype not in DTYPE_NAMES:
            raise AuditError(
                f"tensor '{name}' has dtype {tensor.dtype}; allowed: {', '.join(str(d) for d in DTYPE_NAMES)}"
            )
        raw = _raw(tensor)
        header[name] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        body.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % ALIGN)
    return struct.pack("<Q", len(text)) + text + b"".join(body)


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically (a temporary file renamed over `path`); see to_safetensors."""
    return atomic_write_bytes(path, to_safetensors(tensors, metadata))


def read_tensors(path: str | Path, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file. The tensors are read and checked by formats.read_safetensors
    (bad JSON, offsets outside the body or overlapping, unknown dtypes: AuditError); the metadata must map strings
    to strings."""
    tensors = read_safetensors(path, what)
    raw = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    metadata = json.loads(raw[8 : 8 + size].decode("utf-8")).get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AuditError(
            f"{what} '{path}' is not a valid safetensors file (its __metadata__ is {metadata!r}; "
            "allowed: an object of string values)"
        )
    return tensors, metadata
