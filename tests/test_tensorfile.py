"""The safetensors writer: a hand-made file checked byte by byte against the format's specification, round trips,
and the reader's refusal of malformed headers."""

import json
import struct

import pytest
import torch

from auditnn.errors import AuditError
from auditnn.tensorfile import read_tensors, to_safetensors, write_tensors


def test_a_hand_made_file_has_the_bytes_the_specification_gives():
    tensors = {"b": torch.tensor([1, 2], dtype=torch.int16), "a": torch.tensor([[1.5]], dtype=torch.float32)}
    raw = to_safetensors(tensors, {"layer": "fc"})
    # The JSON, written out by hand: metadata first, then the widest dtype (a, 4-byte floats), then b.
    header = (
        b'{"__metadata__":{"layer":"fc"},'
        b'"a":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]},'
        b'"b":{"dtype":"I16","shape":[2],"data_offsets":[4,8]}}'
    )
    assert len(header) == 31 + 55 + 53  # counted by hand, line by line; padded with 5 spaces to 144, a multiple of 8
    padded = header + b"     "
    body = b"\x00\x00\xc0\x3f" + b"\x01\x00\x02\x00"  # 1.5 = 0x3fc00000 little-endian; int16 1 and 2
    assert raw == b"\x90\x00\x00\x00\x00\x00\x00\x00" + padded + body  # 144 = 0x90
    assert (8 + len(padded)) % 8 == 0


def test_round_trip_keeps_values_dtypes_shapes_and_metadata(tmp_path):
    tensors = {
        "weight": torch.randn(3, 5, dtype=torch.float64),
        "bias": torch.randn(3),
        "half": torch.randn(2, 2).to(torch.bfloat16),
        "flags": torch.tensor([True, False]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous: written in C order of its shape
    }
    path = write_tensors(tmp_path / "t.safetensors", tensors, {"k": "v"})
    read, metadata = read_tensors(path)
    assert metadata == {"k": "v"} and read.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert read[name].dtype == tensor.dtype and read[name].shape == tensor.shape
        assert torch.equal(read[name], tensor), name
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # the atomic write left no temporary file


def test_the_safetensors_package_reads_our_file_and_writes_the_same_bytes(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tensors = {"weight": torch.randn(3, 5), "bias": torch.randn(3), "steps": torch.tensor([1, 2], dtype=torch.int64)}
    path = write_tensors(tmp_path / "ours.safetensors", tensors, {"layer": "fc"})
    theirs = st.load_file(str(path))
    assert all(torch.equal(theirs[k], v) for k, v in tensors.items())
    assert st.save(tensors, metadata={"layer": "fc"}) == path.read_bytes()


def _file(tmp_path, header: object, body: bytes) -> str:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return str(path)


@pytest.mark.parametrize(
    ("header", "body", "message"),
    [
        (b'{"a": {"dtype": "F32"', b"", "not a valid safetensors file"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\x00" * 8, "byte range 0..16"),
        ({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8, "dtype 'Q7'; allowed: F64"),
        ({"__metadata__": {"k": 3}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\x00", "3}"),
    ],
    ids=["bad-json", "offsets-past-the-body", "unknown-dtype", "metadata-not-text"],
)
def test_a_malformed_header_is_refused_with_one_line(tmp_path, header, body, message):
    path = _file(tmp_path, header, body)
    with pytest.raises(AuditError, match="not a valid safetensors file") as caught:
        read_tensors(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_what_the_format_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(AuditError, match=r"dtype torch.complex64; allowed: torch.float64"):
        write_tensors(tmp_path / "c.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(AuditError, match="metadata .* is not text"):
        to_safetensors({"a": torch.zeros(1)}, {"n": 3})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []
