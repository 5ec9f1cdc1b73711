"""Issue 5: the user's own models and data, each made by the test itself in its own on-disk format."""

import json
import pickle
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import assert_usage_error, files_under, run_cli
from PIL import Image

from auditnn.data.sources import load_source
from auditnn.errors import AuditError
from auditnn.models.user import load_user_model
from auditnn.spec import ModelSpec
from auditnn.train import TrainConfig, fit

FACTORY = """
import torch.nn as nn

def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 3))

def five_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))

def wants_rgb():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 784, 3))
"""


def write_safetensors(path: Path, tensors: dict) -> None:
    """The safetensors layout by hand: u64 header length, JSON header, raw little-endian bytes."""
    codes = {torch.float32: "F32", torch.int64: "I64", torch.uint8: "U8"}
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        data = tensor.contiguous().numpy().tobytes()
        header[name] = {
            "dtype": codes[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


@pytest.fixture(scope="module")
def project(tmp_path_factory, digits_base):
    """A user's project: a factory module, trained weights (.pt and .safetensors), an exported program, a
    TorchScript file, an ImageFolder of PNGs for digits 0-2 with a metadata CSV."""
    root = tmp_path_factory.mktemp("project")
    (root / "user_factory.py").write_text(FACTORY)
    keep = digits_base.train.labels < 3
    images, labels = digits_base.train.images[keep][:90], digits_base.train.labels[keep][:90]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 3))
    fit(net, images, labels, TrainConfig(epochs=15), device=torch.device("cpu"))
    net.eval()
    torch.save(net.state_dict(), root / "weights.pt")
    write_safetensors(root / "weights.safetensors", net.state_dict())
    torch.export.save(torch.export.export(net, (images[:4],)), root / "model.pt2")
    torch.jit.save(torch.jit.trace(net, images[:4]), root / "model.ts")
    rows = ["file,label,place"]
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        folder = root / "images" / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0] * 255).round().byte().numpy()).save(folder / f"{i:03d}.png")
        place = "water" if (label == 0) == (i % 5 != 0) else "land"  # place mostly tracks digit 0
        rows.append(f"digit{label}/{i:03d}.png,{label},{place}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    expected = (net(images).argmax(1) == labels).float().mean().item()
    return root, net, images, labels, expected


def _in(project_root, monkeypatch):
    monkeypatch.chdir(project_root)  # factory modules import from the working folder, as with `python -c`


def test_a_factory_model_with_pt_or_safetensors_weights_is_attacked_on_an_imagefolder(capsys, project, monkeypatch):
    root, *_, expected = project
    _in(root, monkeypatch)
    reports = []
    for weights in ("weights.pt", "weights.safetensors"):
        out = root / f"attack-{weights}"
        code, text, err = run_cli(
            capsys,
            "attack",
            "--model",
            "factory:user_factory:make",
            "--weights",
            weights,
            "--data",
            "imagefolder:images",
            "--eps",
            "0,4/255",
            "--device",
            "cpu",
            "--out",
            out,
        )
        assert code == 0, err
        reports.append(json.loads((out / "report.json").read_text())["results"]["attack"]["rows"])
    # PNG round trip is exact for 8-bit pixels, so the clean accuracy is the model's own on these images
    assert reports[0][0]["clean_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert reports[0] == [
        dict(r, seconds=reports[0][i]["seconds"], images_per_second=reports[0][i]["images_per_second"])
        for i, r in enumerate(reports[1])
    ]


def test_an_exported_program_gets_planted_tag_sensitivity(capsys, project, monkeypatch):
    root, *_ = project
    _in(root, monkeypatch)
    code, out, err = run_cli(
        capsys,
        "shortcut",
        "--tag",
        "watermark",
        "--model",
        "export:model.pt2",
        "--data",
        "imagefolder:images",
        "--device",
        "cpu",
        "--out",
        root / "sens",
    )
    assert code == 0, err
    assert "Planted-tag sensitivity: watermark on 90 images" in out
    section = json.loads((root / "sens" / "report.json").read_text())["results"]["sensitivity"]
    assert len(section["variants"]) == 3 and 0 <= section["flip_rate"] <= 1


def test_torchscript_and_exported_programs_agree_with_the_module(project):
    root, net, images, *_ = project
    for spec in (f"export:{root / 'model.pt2'}", f"torchscript:{root / 'model.ts'}"):
        model, _ = load_user_model(ModelSpec(spec), num_classes=3, channels=1)
        assert torch.allclose(model(images[:10]), net(images[:10]), atol=1e-5)  # 10 = 4 + 4 + 2 padded chunks


def test_per_group_accuracy_from_a_metadata_csv_matches_a_hand_count(capsys, project, monkeypatch):
    root, net, images, labels, _ = project
    _in(root, monkeypatch)
    code, out, err = run_cli(
        capsys,
        "shortcut",
        "--model",
        "factory:user_factory:make",
        "--weights",
        "weights.pt",
        "--data",
        "imagefolder:images",
        "--groups",
        "meta.csv",
        "--attribute",
        "place",
        "--device",
        "cpu",
        "--out",
        root / "groups",
    )
    assert code == 0, err
    assert "Groups by 'place'" in out
    section = json.loads((root / "groups" / "report.json").read_text())["results"]["groups"]
    preds = net(images).argmax(1)
    places = [line.split(",")[2] for line in (root / "meta.csv").read_text().split()[1:]]
    for group in section["groups"]:
        members = [i for i in range(len(labels)) if labels[i] == group["label"] and places[i] == group["attribute"]]
        assert group["n"] == len(members)
        assert group["accuracy"] == pytest.approx(float((preds[members] == labels[members]).float().mean()))
    assert section["associated_class"] == {"land": "digit1", "water": "digit0"}


@pytest.mark.parametrize(
    "model",
    ['source = "factory:user_factory:make"\nweights = "weights.safetensors"', 'source = "export:model.pt2"'],
    ids=["factory", "export"],
)
def test_the_audit_file_audits_a_user_model_on_an_imagefolder(capsys, project, monkeypatch, model):
    root, *_ = project
    _in(root, monkeypatch)
    (root / "audit.toml").write_text(
        textwrap.dedent("""
        [model]
        MODEL
        [data]
        source = "imagefolder:images"
        [run]
        device = "cpu"
        [[check]]
        kind = "clean"
        min_accuracy = 0.5
        [[check]]
        kind = "attack"
        eps = "2/255"
        steps = 5
        min_robust_accuracy = 0.0
        [[check]]
        kind = "sensitivity"
        tag = "boat"
        max_flip_rate = 1.0
        [[check]]
        kind = "groups"
        groups = "meta.csv"
        attribute = "place"
        min_worst_group_accuracy = 0.0
    """).replace("MODEL", model)
    )
    code, out, err = run_cli(capsys, "audit", "audit.toml", "--out", root / "audit")
    assert code == 0, err
    verdict = json.loads((root / "audit" / "report.json").read_text())["results"]["verdict"]
    assert verdict["passed"] and {r["check"] for r in verdict["rows"]} == {
        "clean accuracy",
        "pgd linf eps=2/255 5 steps",
        "planted boat sensitivity",
        "groups by place",
    }


def test_a_torchvision_architecture_with_user_weights_on_a_tensors_file(capsys, tmp_path):
    import torchvision

    net = torchvision.models.get_model("resnet18", weights=None, num_classes=4).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)  # NHWC uint8, as photos often come
    torch.save({"images": images, "labels": torch.tensor([0, 1, 2, 3, 0, 1])}, tmp_path / "data.pt")
    code, _, err = run_cli(
        capsys,
        "attack",
        "--method",
        "fgsm",
        "--eps",
        "0,1/255",
        "--model",
        "torchvision:resnet18",
        "--weights",
        tmp_path / "r18.pt",
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--data",
        f"tensors:{tmp_path / 'data.pt'}",
        "--device",
        "cpu",
        "--no-sanity",
        "--out",
        tmp_path / "out",
    )
    assert code == 0, err
    x = images.permute(0, 3, 1, 2).float() / 255
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    expected = (net((x - mean) / std).argmax(1) == torch.tensor([0, 1, 2, 3, 0, 1])).float().mean().item()
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["results"]["attack"]["rows"]
    assert rows[0]["clean_accuracy"] == pytest.approx(expected)


def test_tensors_files_in_pt_npz_and_safetensors_load_alike(tmp_path):
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1, 1])
    torch.save({"images": images, "labels": labels, "classes": ["cat", "dog"]}, tmp_path / "a.pt")
    np.savez(tmp_path / "a.npz", images=images.numpy(), labels=labels.numpy(), classes=np.array(["cat", "dog"]))
    write_safetensors(tmp_path / "a.safetensors", {"images": images, "labels": labels})
    loaded = [load_source(f"tensors:{tmp_path / name}").train for name in ("a.pt", "a.npz", "a.safetensors")]
    for data in loaded:
        assert torch.equal(data.images, images.float() / 255) and torch.equal(data.labels, labels)
    assert loaded[0].classes == loaded[1].classes == ["cat", "dog"] and loaded[2].classes == ["0", "1"]


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(_RunsCode.target),))


def test_weights_that_would_run_code_are_refused_and_the_code_does_not_run(capsys, project, monkeypatch, tmp_path):
    root, *_ = project
    _in(root, monkeypatch)
    _RunsCode.target = str(tmp_path / "pwned")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"0.weight": _RunsCode()}))
    torch.save({"x": _RunsCode()}, tmp_path / "evil2.pt")
    for evil in ("evil.pt", "evil2.pt"):
        code, _, err = run_cli(
            capsys,
            "attack",
            "--model",
            "factory:user_factory:make",
            "--weights",
            tmp_path / evil,
            "--data",
            "imagefolder:images",
            "--device",
            "cpu",
            "--out",
            tmp_path / "out",
        )
        assert_usage_error(code, err, evil, "cannot be read safely", "weights_only=True")
    assert not (tmp_path / "pwned").exists() and files_under(tmp_path / "out") == []


def _bad(capsys, root, *args):
    return run_cli(capsys, "attack", "--method", "fgsm", "--device", "cpu", "--out", root / "bad-out", *args)


def test_weights_of_another_model_name_the_first_keys(capsys, project, monkeypatch):
    root, *_ = project
    _in(root, monkeypatch)
    torch.save({"fc.weight": torch.zeros(3, 784), "1.weight": torch.zeros(32, 784)}, root / "other.pt")
    code, _, err = _bad(
        capsys, root, "--model", "factory:user_factory:make", "--weights", "other.pt", "--data", "imagefolder:images"
    )
    assert_usage_error(code, err, "missing keys ['1.bias', '3.weight', '3.bias']", "unexpected keys ['fc.weight']")


@pytest.mark.parametrize(
    "factory,needles",
    [
        ("five_classes", ["answers with 5 classes but the data has 3"]),
        ("wants_rgb", ["fails on the data's images of shape [1, 28, 28]", "channels and size"]),
    ],
)
def test_models_that_do_not_fit_the_data_are_refused(capsys, project, monkeypatch, factory, needles):
    root, *_ = project
    _in(root, monkeypatch)
    code, _, err = _bad(capsys, root, "--model", f"factory:user_factory:{factory}", "--data", "imagefolder:images")
    assert_usage_error(code, err, *needles)


def test_non_image_files_are_skipped_and_counted_or_refused_under_strict(capsys, project, monkeypatch):
    root, *_ = project
    _in(root, monkeypatch)
    (root / "images" / "digit0" / "notes.txt").write_text("not an image")
    try:
        args = ("shortcut", "--model", "export:model.pt2", "--data", "imagefolder:images", "--device", "cpu")
        code, _, err = run_cli(capsys, *args, "--out", root / "skip")
        assert code == 0 and "1 non-image file(s) in the folder were skipped" in err
        assert (
            json.loads((root / "skip" / "report.json").read_text())["results"]["sensitivity"]["data"]["skipped_files"]
            == 1
        )
        code, _, err = run_cli(capsys, *args, "--strict", "--out", root / "strict")
        assert_usage_error(code, err, "1 non-image file(s)", "notes.txt", "--strict")
    finally:
        (root / "images" / "digit0" / "notes.txt").unlink()


def test_a_corrupt_image_is_named(capsys, tmp_path):
    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "imgs" / name / "ok.png")
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(AuditError, match="broken.png' cannot be decoded"):
        load_source(f"imagefolder:{tmp_path / 'imgs'}")


@pytest.mark.parametrize(
    "csv,needles",
    [
        ("file,label\ndigit0/000.png,0\n", ["has no column 'place'", "file, label"]),
        ("file,label,place\ndigit0/nope.png,0,water\n", ["names 1 image(s) not in the data", "nope.png"]),
        ("file,label,place\ndigit0/000.png,2,water\n", ["disagrees with the data's labels", "says 2"]),
    ],
)
def test_bad_metadata_csvs_are_named_with_the_fix(capsys, project, monkeypatch, csv, needles):
    root, *_ = project
    _in(root, monkeypatch)
    (root / "bad.csv").write_text(csv)
    code, _, err = run_cli(
        capsys,
        "shortcut",
        "--model",
        "export:model.pt2",
        "--data",
        "imagefolder:images",
        "--groups",
        "bad.csv",
        "--attribute",
        "place",
        "--device",
        "cpu",
        "--out",
        root / "bad-groups",
    )
    assert_usage_error(code, err, "bad.csv", *needles)
    assert files_under(root / "bad-groups") == []


def test_a_shortcut_check_in_an_audit_file_uses_the_models_weights(capsys, project, monkeypatch):
    root, *_, expected = project
    _in(root, monkeypatch)
    (root / "shortcut.toml").write_text(
        textwrap.dedent("""
        [model]
        source = "factory:user_factory:make"
        weights = "weights.pt"
        [data]
        source = "imagefolder:images"
        test_per_class = 5
        [run]
        device = "cpu"
        [[check]]
        kind = "shortcut"
        tag = "watermark"
        max_reliance = 1.0
    """)
    )
    code, _, err = run_cli(capsys, "audit", "shortcut.toml", "--out", root / "shortcut-audit")
    assert code == 0, err
    metrics = json.loads((root / "shortcut-audit" / "report.json").read_text())["results"]["shortcut"]["rows"][0][
        "metrics"
    ]
    # The trained weights were loaded: a freshly initialised 3-class model would be near 1/3.
    assert expected > 0.9 and metrics["clean_accuracy"] > 0.9
