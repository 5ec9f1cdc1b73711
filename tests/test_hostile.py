"""Issue 10: hostile and malformed inputs. Each case writes its own file, runs the CLI, and asserts exit 2, one
line naming the file or value, no traceback, no code run, and no output folder left behind."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import assert_usage_error, files_under, run_cli
from PIL import Image

from auditnn.data.sources import load_source
from auditnn.errors import AuditError, Interrupted
from auditnn.models.user import load_user_model
from auditnn.spec import ModelSpec

UNSAFE_ADVICE = ("weights_only=False", "weights_only set to False", "unsafely", "allow_pickle=True", "trust the source")


class _TouchesMarker:
    """A pickle that, when unpickled by a full unpickler, creates the file MARKER."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(_TouchesMarker.marker),))


@pytest.fixture
def marker(tmp_path):
    _TouchesMarker.marker = str(tmp_path / "code-ran")
    return tmp_path / "code-ran"


def run_refused(capsys, tmp_path, *args: str, needles: tuple[str, ...]) -> str:
    """Run `auditnn attack` on the inputs; assert the bad-input contract and that --out was left absent."""
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "attack", "--method", "fgsm", "--eps", "0,1/255", "--no-sanity", "--device", "cpu", "--out", out, *args
    )
    assert_usage_error(code, err, *needles)
    assert not any(advice in err for advice in UNSAFE_ADVICE), err
    assert not out.exists() and files_under(out) == []
    return err


@pytest.fixture
def good_data(tmp_path) -> Path:
    """Six 1x2x2 images in three classes: what the small exported model below takes."""
    torch.manual_seed(0)
    torch.save({"images": torch.rand(6, 1, 2, 2), "labels": torch.tensor([0, 1, 2, 0, 1, 2])}, tmp_path / "good.pt")
    return tmp_path / "good.pt"


# ---------------------------------------------------------------- item 1: torch.export archives that would run code


class _WithConstant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.offset = torch.ones(3)  # a plain tensor attribute: export stores it as a constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) + self.offset


def _rewrite_archive(src: Path, dst: Path, edit) -> None:
    """Copy the zip member by member; edit(name, data) returns new bytes, a (new name, bytes) pair, or None to keep
    them; edit(None, None) returns extra (name, bytes) members to add."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = zin.read(info.filename)
            new = edit(info.filename[len(root) + 1 :], data)
            if isinstance(new, tuple):
                zout.writestr(f"{root}/{new[0]}", new[1])
            else:
                zout.writestr(info, data if new is None else new)
        for name, data in edit(None, None) or []:
            zout.writestr(f"{root}/{name}", data)


def _mark_pickled(config_name: str, payload: bytes, extra_entry: dict | None = None):
    """An edit that flags the config's first entry use_pickle (or adds `extra_entry`) and swaps in `payload`."""
    chosen = {}

    def edit(name, data):
        if name is None:
            return [(f"data/constants/{extra_entry['path_name']}", payload)] if extra_entry else None
        if name.endswith(config_name):
            config = json.loads(data)
            if extra_entry:
                config["config"]["evil"] = extra_entry
            else:
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                chosen["path"] = first["path_name"]
            return json.dumps(config).encode()
        if chosen.get("path") and name.endswith("/" + chosen["path"]):
            return payload
        return None

    return edit


def _member(archive: Path, name: str) -> bytes:
    with zipfile.ZipFile(archive) as z:
        return z.read(f"{z.namelist()[0].split('/')[0]}/{name}")


def _legacy_under_blob_name(folder: str, blob: str, payload: bytes):
    """An edit that renames the program 'model' to `blob` (a name the old prefix check let through under data/) and
    adds `folder`/`blob`.pt, which torch reads as a legacy pickled state dict, falling back to its full unpickler."""

    def edit(name, data):
        if name is None:
            return [(f"data/{folder}/{blob}.pt", payload)]
        for old, new in (
            ("models/model.json", f"models/{blob}.json"),
            ("data/sample_inputs/model.pt", f"data/sample_inputs/{blob}.pt"),
            ("data/weights/model_weights_config.json", f"data/weights/{blob}_weights_config.json"),
            ("data/constants/model_constants_config.json", f"data/constants/{blob}_constants_config.json"),
        ):
            if name == old:
                return new, data
        return None

    return edit


def _evil_archives(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(_WithConstant(), (torch.zeros(2, 1, 2, 2),)), good)
    raw_pickle = pickle.dumps(_TouchesMarker())
    buffer = io.BytesIO()
    torch.save({"x": _TouchesMarker()}, buffer)
    torch_pickle = buffer.getvalue()
    edits = {
        "weight-use-pickle": _mark_pickled("model_weights_config.json", raw_pickle),
        "weight-use-pickle-torch-save": _mark_pickled("model_weights_config.json", torch_pickle),
        "constant-use-pickle": _mark_pickled("model_constants_config.json", torch_pickle),
        "opaque-object-constant": _mark_pickled(
            "model_constants_config.json",
            raw_pickle,
            {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True},
        ),
        "custom-object-constant": _mark_pickled(
            "model_constants_config.json",
            raw_pickle,
            {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True},
        ),
        "sample-inputs-pickle": lambda name, data: (
            torch_pickle if name and name.startswith("data/sample_inputs/") else None
        ),
        "legacy-weights-file": lambda name, data: [("data/weights/model.pt", torch_pickle)] if name is None else None,
        "legacy-format-file": lambda name, data: [("serialized_state_dict.pt", torch_pickle)] if name is None else None,
        "duplicate-sample-inputs": lambda name, data: (
            (torch_pickle if name == "data/sample_inputs/model.pt" else None)
            if name
            else [("data/sample_inputs/model.pt", _member(good, "data/sample_inputs/model.pt"))]
        ),
        "legacy-weights-under-a-blob-name": _legacy_under_blob_name("weights", "weight_x", torch_pickle),
        "legacy-constants-under-a-blob-name": _legacy_under_blob_name("constants", "tensor_x", torch_pickle),
    }
    paths = {}
    for case, edit in edits.items():
        paths[case] = tmp_path / f"{case}.pt2"
        _rewrite_archive(good, paths[case], edit)
    return paths


EVIL_ARCHIVES = (
    "weight-use-pickle",
    "weight-use-pickle-torch-save",
    "constant-use-pickle",
    "opaque-object-constant",
    "custom-object-constant",
    "sample-inputs-pickle",
    "duplicate-sample-inputs",
    "legacy-weights-file",
    "legacy-format-file",
    "legacy-weights-under-a-blob-name",
    "legacy-constants-under-a-blob-name",
)


def test_the_untouched_archive_loads_and_answers_like_the_module(tmp_path):
    torch.manual_seed(0)
    net = _WithConstant().eval()
    torch.export.save(torch.export.export(net, (torch.zeros(2, 1, 2, 2),)), tmp_path / "ok.pt2")
    model, _ = load_user_model(ModelSpec(f"export:{tmp_path / 'ok.pt2'}"), num_classes=3, channels=1)
    x = torch.rand(5, 1, 2, 2)
    assert torch.allclose(model(x), net(x), atol=1e-6)


@pytest.mark.parametrize("case", EVIL_ARCHIVES)
def test_an_export_archive_that_would_run_code_is_refused_before_torch_reads_it(
    capsys, tmp_path, marker, good_data, case
):
    evil = _evil_archives(tmp_path)[case]
    run_refused(
        capsys, tmp_path, "--model", f"export:{evil}", "--data", f"tensors:{good_data}", needles=(str(evil), "refused")
    )
    assert not marker.exists()


@pytest.mark.parametrize("case", ["legacy-weights-under-a-blob-name", "legacy-constants-under-a-blob-name"])
def test_a_renamed_program_is_named_as_what_is_refused(capsys, tmp_path, marker, good_data, case):
    evil = _evil_archives(tmp_path)[case]
    run_refused(
        capsys,
        tmp_path,
        "--model",
        f"export:{evil}",
        "--data",
        f"tensors:{good_data}",
        needles=(str(evil), "models/weight_x.json" if "weights" in case else "models/tensor_x.json", "refused"),
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", "not a torch.export archive"),
        (b"PK\x03\x04junk", "not a torch.export archive"),
        (b"\x00" * 64, "not a torch.export archive"),
    ],
    ids=["empty", "bad-zip", "zeros"],
)
def test_an_export_file_that_is_not_an_archive_is_named(capsys, tmp_path, good_data, content, needle):
    (tmp_path / "m.pt2").write_bytes(content)
    run_refused(
        capsys,
        tmp_path,
        "--model",
        f"export:{tmp_path / 'm.pt2'}",
        "--data",
        f"tensors:{good_data}",
        needles=(str(tmp_path / "m.pt2"), needle),
    )


# ---------------------------------------------------------------- item 3: user code that exits or raises

FACTORY_BODIES = {
    "exit-0-at-import": ("import sys\nsys.exit(0)\n", "importing module", "SystemExit(0)"),
    "exit-0-in-factory": ("import sys\ndef make():\n    sys.exit(0)\n", "calling", "SystemExit(0)"),
    "argparse-at-import": (
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--config', required=True)\np.parse_args()\n",
        "importing module",
        "SystemExit(2)",
    ),
    "syntax-error": ("def make(:\n    pass\n", "importing module", "SyntaxError"),
    "value-error-at-import": ("raise ValueError('no GPU here')\n", "importing module", "ValueError: no GPU here"),
    "value-error-in-factory": (
        "def make():\n    raise ValueError('bad config')\n",
        "calling",
        "ValueError: bad config",
    ),
    "eof-error-in-factory": ("def make():\n    raise EOFError\n", "calling", "EOFError"),
    "missing-dependency": (
        "import a_package_that_is_not_installed\n",
        "importing module",
        "a_package_that_is_not_installed",
    ),
    "returns-a-string": ("def make():\n    return 'a model'\n", "returned str", "torch.nn.Module"),
    "exit-in-forward": (
        "import sys\nimport torch.nn as nn\nclass Quits(nn.Module):\n    def forward(self, x):\n"
        "        sys.exit(0)\ndef make():\n    return Quits()\n",
        "SystemExit(0)",
        "forward",
    ),
    "base-exception-at-import": (
        "class Boom(BaseException):\n    pass\nraise Boom('no GPU')\n",
        "importing module",
        "Boom: no GPU",
    ),
    "base-exception-in-factory": (
        "class Boom(BaseException):\n    pass\ndef make():\n    raise Boom('bad config')\n",
        "calling",
        "Boom: bad config",
    ),
    "generator-exit-in-factory": ("def make():\n    raise GeneratorExit\n", "calling", "GeneratorExit"),
    "keyboard-interrupt-in-factory": ("def make():\n    raise KeyboardInterrupt\n", "calling", "KeyboardInterrupt"),
    "base-exception-in-forward": (
        "import torch.nn as nn\nclass Boom(BaseException):\n    pass\nclass Raises(nn.Module):\n"
        "    def forward(self, x):\n        raise Boom('mid-batch')\ndef make():\n    return Raises()\n",
        "forward",
        "Boom: mid-batch",
    ),
    "keyboard-interrupt-in-forward": (
        "import torch.nn as nn\nclass Raises(nn.Module):\n    def forward(self, x):\n"
        "        raise KeyboardInterrupt\ndef make():\n    return Raises()\n",
        "forward",
        "KeyboardInterrupt",
    ),
}


@pytest.mark.parametrize("case", FACTORY_BODIES)
def test_user_code_that_exits_or_raises_is_exit_2_naming_the_module(capsys, tmp_path, monkeypatch, good_data, case):
    body, *needles = FACTORY_BODIES[case]
    module = "hostile_" + case.replace("-", "_")
    (tmp_path / f"{module}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_refused(
        capsys,
        tmp_path,
        "--model",
        f"factory:{module}:make",
        "--data",
        f"tensors:{good_data}",
        needles=(f"factory:{module}:make", *needles),
    )


@pytest.mark.parametrize("case", ["exit-0-at-import", "exit-0-in-factory"])
def test_a_factory_that_exits_0_cannot_make_an_audit_pass(capsys, tmp_path, monkeypatch, good_data, case):
    module = "hostile_audit_" + case.replace("-", "_")
    (tmp_path / f"{module}.py").write_text(FACTORY_BODIES[case][0])
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "audit.toml").write_text(
        f'[model]\nsource = "factory:{module}:make"\n[data]\nsource = "tensors:{good_data}"\n'
        '[run]\ndevice = "cpu"\n[[check]]\nkind = "clean"\nmin_accuracy = 0.5\n'
    )
    code, _, err = run_cli(capsys, "audit", tmp_path / "audit.toml", "--out", tmp_path / "out")
    assert_usage_error(code, err, f"factory:{module}:make", "SystemExit(0)")
    assert not (tmp_path / "out").exists()


def test_argparse_usage_printed_by_user_code_is_kept_out_of_the_terminal_but_quoted(
    capsys, tmp_path, monkeypatch, good_data
):
    (tmp_path / "hostile_usage.py").write_text(FACTORY_BODIES["argparse-at-import"][0])
    monkeypatch.syspath_prepend(str(tmp_path))
    err = run_refused(
        capsys,
        tmp_path,
        "--model",
        "factory:hostile_usage:make",
        "--data",
        f"tensors:{good_data}",
        needles=("the following arguments are required: --config",),
    )
    assert "[-h]" not in err  # argparse's usage line


def test_a_signal_that_lands_in_user_code_still_interrupts(tmp_path, monkeypatch):
    """auditnn's SIGINT handler raises Interrupted wherever the main thread is, the user's factory included."""
    (tmp_path / "hostile_interrupt.py").write_text(
        "import signal\nfrom auditnn.errors import Interrupted\ndef make():\n    raise Interrupted(signal.SIGINT)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Interrupted):
        load_user_model(ModelSpec("factory:hostile_interrupt:make"), num_classes=3, channels=1)


# ---------------------------------------------------------------- items 7 and 8: data files


def _safetensors(header: object, body: bytes = b"", length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + body


def _entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


SIX_FLOATS = np.zeros(6, dtype=np.float32).tobytes()
SAFETENSORS_CASES = {
    "header-is-a-list": (_safetensors([1, 2]), "header is not a JSON object"),
    "header-length-past-end": (_safetensors({}, length=10_000), "header length 10000"),
    "shorter-than-8-bytes": (b"\x01\x02", "8-byte header length"),
    "header-not-utf8": (struct.pack("<Q", 2) + b"\xff\xfe", "header"),
    "offsets-past-end": (
        _safetensors({"images": _entry("F32", [1, 1, 1, 1024], 0, 4096)}, SIX_FLOATS[:8]),
        "byte range 0..4096",
    ),
    "trailing-bytes": (_safetensors({"images": _entry("F32", [1, 1, 1, 2], 0, 8)}, SIX_FLOATS), "end at byte 8"),
    "negative-offset": (
        _safetensors({"images": _entry("F32", [1, 1, 1, 2], -8, 0)}, SIX_FLOATS[:8]),
        "byte range -8..0",
    ),
    "offsets-overlap": (
        _safetensors(
            {"images": _entry("F32", [1, 1, 2, 2], 0, 16), "labels": _entry("I64", [1], 8, 16)}, SIX_FLOATS[:16]
        ),
        "overlap",
    ),
    "gap-between-tensors": (
        _safetensors(
            {"images": _entry("F32", [1, 1, 1, 2], 0, 8), "labels": _entry("I64", [1], 16, 24)}, SIX_FLOATS + bytes(8)
        ),
        "gap",
    ),
    "bytes-not-matching-shape": (
        _safetensors({"images": _entry("F32", [1, 1, 2, 2], 0, 8)}, SIX_FLOATS[:8]),
        "does not fit its shape",
    ),
    "negative-dimension": (
        _safetensors({"images": _entry("F32", [-1, 1, 1, 2], 0, 8)}, SIX_FLOATS[:8]),
        "shape [-1, 1, 1, 2]",
    ),
    "overflowing-dimensions": (_safetensors({"images": _entry("F32", [2**40, 2**40, 2**40, 0], 0, 0)}), "shape"),
    "dimension-2-to-the-63": (_safetensors({"images": _entry("F32", [2**63, 0], 0, 0)}), "too large"),
    "overflow-to-zero": (
        _safetensors({"images": _entry("F32", [2**32, 2**32], 0, 0)}),
        "shape [4294967296, 4294967296]",
    ),
    "unknown-dtype": (_safetensors({"images": _entry("F8_E4M3", [1], 0, 1)}, b"\x00"), "dtype 'F8_E4M3'"),
    "offsets-not-a-pair": (
        _safetensors({"images": {"dtype": "F32", "shape": [1], "data_offsets": 4}}, SIX_FLOATS[:4]),
        "data_offsets",
    ),
}


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


GOOD_NPZ = _npz_bytes(images=np.zeros((4, 2, 2), np.uint8), labels=np.array([0, 1, 0, 1]))
NPZ_CASES = {
    "empty": (b"", "cannot be read as .npz"),
    "not-a-zip": (b"hello, I am not a zip", "cannot be read as .npz"),
    "truncated": (GOOD_NPZ[: len(GOOD_NPZ) // 2], "cannot be read as .npz"),
    "pickled-object-array": (
        _npz_bytes(images=np.zeros((4, 2, 2), np.uint8), labels=np.array([{"a": 1}] * 4, dtype=object)),
        "pickled",
    ),
    "string-labels": (
        _npz_bytes(images=np.zeros((4, 2, 2), np.uint8), labels=np.array(["cat", "dog", "cat", "dog"])),
        "labels",
    ),
    "float-labels": (_npz_bytes(images=np.zeros((4, 2, 2), np.uint8), labels=np.array([0.0, 1.5, 0.0, 1.0])), "1.5"),
}


TENSORS_FILE_CASES = {
    **{f"safetensors-{k}": (".safetensors", *v) for k, v in SAFETENSORS_CASES.items()},
    **{f"npz-{k}": (".npz", *v) for k, v in NPZ_CASES.items()},
}


@pytest.mark.parametrize("case", TENSORS_FILE_CASES)
def test_a_malformed_safetensors_or_npz_file_is_named(capsys, tmp_path, case):
    suffix, content, needle = TENSORS_FILE_CASES[case]
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(content)
    run_refused(capsys, tmp_path, "--model", "mlp", "--data", f"tensors:{bad}", needles=(str(bad), needle))


IMAGES = torch.zeros(4, 1, 2, 2)
PT_CASES = {
    "string-labels": ({"images": IMAGES, "labels": ["cat", "dog", "cat", "dog"]}, "labels"),
    "float-labels": ({"images": IMAGES, "labels": torch.tensor([0.0, 1.0, 0.7, 1.0])}, "0.7"),
    "nan-labels": ({"images": IMAGES, "labels": torch.tensor([0.0, 1.0, float("nan"), 1.0])}, "nan"),
    "classes-an-int": ({"images": IMAGES, "labels": torch.tensor([0, 1, 0, 1]), "classes": 2}, "classes"),
    "classes-a-tensor": (
        {"images": IMAGES, "labels": torch.tensor([0, 1, 0, 1]), "classes": torch.tensor([0, 1])},
        "classes",
    ),
    "images-a-string": ({"images": "cat.png", "labels": torch.tensor([0, 1])}, "images"),
    "labels-a-dict": ({"images": IMAGES, "labels": {"a": 1}}, "labels"),
    "zero-images-with-classes": (
        {"images": torch.zeros(0, 1, 2, 2), "labels": torch.zeros(0, dtype=torch.long), "classes": ["cat", "dog"]},
        "no images",
    ),
    "a-list-not-a-dict": ([IMAGES, torch.tensor([0, 1, 0, 1])], "holds a list"),
}


@pytest.mark.parametrize("case", PT_CASES)
def test_a_bad_tensors_file_is_named(capsys, tmp_path, case):
    content, needle = PT_CASES[case]
    torch.save(content, tmp_path / "bad.pt")
    run_refused(
        capsys,
        tmp_path,
        "--model",
        "mlp",
        "--data",
        f"tensors:{tmp_path / 'bad.pt'}",
        needles=(str(tmp_path / "bad.pt"), needle),
    )


def test_zero_images_leave_no_folder_from_a_data_build(capsys, tmp_path):
    torch.save(PT_CASES["zero-images-with-classes"][0], tmp_path / "empty.pt")
    code, _, err = run_cli(
        capsys, "data", "build", "--base", f"tensors:{tmp_path / 'empty.pt'}", "--out", tmp_path / "built"
    )
    assert_usage_error(code, err, str(tmp_path / "empty.pt"), "no images")
    assert not (tmp_path / "built").exists()


def test_a_pickle_that_would_run_code_in_a_tensors_file_is_refused_without_unsafe_advice(capsys, tmp_path, marker):
    torch.save({"images": IMAGES, "labels": _TouchesMarker()}, tmp_path / "evil.pt")
    run_refused(
        capsys,
        tmp_path,
        "--model",
        "mlp",
        "--data",
        f"tensors:{tmp_path / 'evil.pt'}",
        needles=(str(tmp_path / "evil.pt"), "cannot be read safely"),
    )
    assert not marker.exists()


def _not_a_regular_file(tmp_path: Path, kind: str) -> Path:
    if kind == "directory":
        (tmp_path / "adir.pt").mkdir()
        return tmp_path / "adir.pt"
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.pt")
        return tmp_path / "pipe.pt"
    return Path("/dev/zero")


NOT_REGULAR = {"directory": "is a directory", "fifo": "is not a regular file", "dev-zero": "is not a regular file"}


# A FIFO or a device cannot carry the .safetensors suffix that picks that reader: only a folder is tried there.
@pytest.mark.parametrize(
    "where,kind",
    [(where, kind) for where in ("data", "weights", "export", "torchscript") for kind in NOT_REGULAR]
    + [("safetensors-weights", "directory")],
)
def test_a_directory_fifo_or_device_is_called_what_it_is(capsys, tmp_path, good_data, where, kind):
    path = _not_a_regular_file(tmp_path, kind)
    if where == "safetensors-weights":
        path = path.rename(tmp_path / "w.safetensors")
    args = {
        "data": ("--model", "mlp", "--data", f"tensors:{path}"),
        "weights": ("--model", "torchvision:resnet18", "--weights", str(path), "--data", f"tensors:{good_data}"),
        "safetensors-weights": (
            "--model",
            "torchvision:resnet18",
            "--weights",
            str(path),
            "--data",
            f"tensors:{good_data}",
        ),
        "export": ("--model", f"export:{path}", "--data", f"tensors:{good_data}"),
        "torchscript": ("--model", f"torchscript:{path}", "--data", f"tensors:{good_data}"),
    }[where]
    err = run_refused(capsys, tmp_path, *args, needles=(str(path), NOT_REGULAR[kind]))
    assert "does not exist" not in err


# ---------------------------------------------------------------- items 7 and 8: image folders


def _folder(tmp_path: Path, counts: dict[str, int]) -> Path:
    root = tmp_path / "imgs"
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((4, 4), 30 * i, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height; the (tiny) pixel data that follows is never reached."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 8)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "side,needle",
    [
        (60000, "decompression bomb (Image size (3600000000 pixels)"),
        (4097, "claims 4097x4097 pixels"),
        (4096, "cannot be decoded"),
    ],
    ids=["pil-bomb-60000", "over-our-cap-4097", "at-our-cap-4096-is-decoded"],
)
def test_a_png_claiming_a_huge_size_is_refused_before_decoding(capsys, tmp_path, side, needle):
    root = _folder(tmp_path, {"a": 2, "b": 2})
    (root / "b" / "bomb.png").write_bytes(_png_claiming(side, side))
    run_refused(
        capsys,
        tmp_path,
        "--model",
        "mlp",
        "--data",
        f"imagefolder:{root}",
        "--test-per-class",  # one held out: the folder passes the split, so the file's pixels are reached
        "1",
        needles=(str(root / "b" / "bomb.png"), needle),
    )


def test_an_empty_class_folder_is_refused_naming_it(capsys, tmp_path):
    root = _folder(tmp_path, {"a": 2, "b": 2, "c": 0})
    (root / "c" / "notes.txt").write_text("no pictures here")
    run_refused(
        capsys,
        tmp_path,
        "--model",
        "mlp",
        "--data",
        f"imagefolder:{root}",
        needles=(str(root / "c"), "holds no images"),
    )


def test_an_unreadable_class_folder_is_refused_naming_it(capsys, tmp_path, monkeypatch):
    root = _folder(tmp_path, {"a": 2, "b": 2, "c": 2})
    locked = root / "c"
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads any folder: make the kernel's refusal happen for this one folder
        real_scandir = os.scandir

        def scandir(path="."):
            if isinstance(path, (str, os.PathLike)) and Path(path) == locked:  # scandir(fd) from rmtree passes
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        run_refused(
            capsys,
            tmp_path,
            "--model",
            "mlp",
            "--data",
            f"imagefolder:{root}",
            needles=(str(locked), "cannot be read", "Permission denied"),
        )
    finally:
        locked.chmod(0o755)


def test_the_hostile_image_checks_leave_a_good_folder_alone(tmp_path):
    root = _folder(tmp_path, {"a": 2, "b": 3})
    data = load_source(f"imagefolder:{root}").train
    assert data.labels.tolist() == [0, 0, 1, 1, 1] and data.images.shape == (5, 1, 4, 4)
    assert data.images[3, 0, 0, 0].item() == pytest.approx(30 / 255)


def test_integral_float_labels_are_accepted_as_their_integers(tmp_path):
    torch.save({"images": IMAGES, "labels": torch.tensor([0.0, 1.0, 2.0, 1.0])}, tmp_path / "ok.pt")
    assert load_source(f"tensors:{tmp_path / 'ok.pt'}").train.labels.tolist() == [0, 1, 2, 1]
    with pytest.raises(AuditError, match="classes"):
        torch.save(
            {"images": IMAGES, "labels": torch.tensor([0, 1, 0, 1]), "classes": ["a", "b", 3]}, tmp_path / "c.pt"
        )
        load_source(f"tensors:{tmp_path / 'c.pt'}")
