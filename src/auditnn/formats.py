"""Readers for tensor files that cannot run code: safetensors (a JSON header and raw bytes) and NumPy .npz."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from .errors import AuditError

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
MAX_HEADER = 100 * 1024 * 1024  # the format's own limit on the JSON header


def read_safetensors(path: str | Path, what: str = "file") -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file: an 8-byte little-endian header length, a JSON header naming each tensor's
    dtype, shape and byte range, then the raw bytes. Nothing in it is executed."""
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"{what} '{path}' does not exist; give an existing .safetensors file")
    raw = path.read_bytes()
    try:
        if len(raw) < 8:
            raise ValueError("shorter than its 8-byte header length")
        (size,) = struct.unpack("<Q", raw[:8])
        if size > MAX_HEADER or 8 + size > len(raw):
            raise ValueError(f"header length {size} does not fit the file")
        header = json.loads(raw[8 : 8 + size])
        body = memoryview(raw)[8 + size :]
        tensors = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES[spec["dtype"]]
            begin, end = spec["data_offsets"]
            shape = [int(d) for d in spec["shape"]]
            count = int(np.prod(shape)) if shape else 1
            if not 0 <= begin <= end <= len(body) or end - begin != count * torch.empty((), dtype=dtype).element_size():
                raise ValueError(f"tensor '{name}' has byte range {begin}..{end}, which does not fit its shape {shape}")
            flat = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype) if count else torch.empty(0, dtype=dtype)
            tensors[name] = flat.reshape(shape)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditError(f"{what} '{path}' is not a valid safetensors file ({exc})") from None
    return tensors


def read_npz(path: str | Path, what: str = "file") -> dict[str, np.ndarray]:
    """Arrays from a .npz file, with pickled objects refused (allow_pickle=False)."""
    try:
        with np.load(Path(path), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise AuditError(f"{what} '{path}' cannot be read as .npz without pickles ({exc})") from None
