import json

import pandas as pd
import pytest
import torch
from helpers import assert_usage_error, files_under, run_cli

from auditnn.errors import AuditError
from auditnn.models import save_model_dir

FAST = ("--epochs", "1", "--test-per-class", "3", "--device", "cpu")


def test_shortcut_prints_the_table_and_writes_consistent_reports(capsys, tmp_path):
    code, out, err = run_cli(capsys, "shortcut", "--tag", "watermark", *FAST, "--out", tmp_path)
    assert code == 0, err
    assert "Shortcut reliance: watermark on digits" in out and "worst-group accuracy" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema"] == "auditnn.report" and report["schema_version"] == 1
    assert report["seed"] == 0 and report["environment"]["torch"] and report["environment"]["device"] == "cpu"
    assert report["config"]["checks"][0]["settings"]["tag"] == "watermark" and report["timings"]["total"] > 0
    metrics = report["results"]["shortcut"]["rows"][0]["metrics"]
    csv = pd.read_csv(tmp_path / "metrics.csv")
    reliance = csv[(csv.metric == "reliance")]
    assert reliance.value.tolist() == [pytest.approx(metrics["reliance"])]
    value = dict(zip(csv.metric, csv.value, strict=True))
    assert value["attribution_ratio"] == pytest.approx(value["attribution_mass"] / value["attribution_chance"])
    assert value["reliance"] == pytest.approx(max(0.0, value["gap"] / value["aligned_accuracy"]))
    assert len(csv[csv.metric == "group_accuracy"]) == 100  # 10 labels x 10 shortcut ids
    assert f"{metrics['worst_group_accuracy']:.3f}" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "models" / "rho-0.95" / "model.json").is_file()


@pytest.mark.parametrize("tag", ["background", "boat"])
def test_every_tag_runs_from_the_cli(capsys, tmp_path, tag):
    code, out, err = run_cli(capsys, "shortcut", "--tag", tag, *FAST, "--model", "mlp", "--out", tmp_path)
    assert code == 0, err
    assert f"Shortcut reliance: {tag} on digits" in out


def test_a_rho_sweep_gives_one_column_per_rho(capsys, tmp_path):
    code, out, err = run_cli(capsys, "shortcut", "--rho", "0.5,0.99", *FAST, "--model", "mlp", "--out", tmp_path)
    assert code == 0, err
    assert "rho 0.50" in out and "rho 0.99" in out
    rows = json.loads((tmp_path / "report.json").read_text())["results"]["shortcut"]["rows"]
    assert [r["rho"] for r in rows] == [0.5, 0.99]


def test_built_data_and_trained_model_are_reused(capsys, tmp_path):
    data, model = tmp_path / "data", tmp_path / "model"
    code, out, err = run_cli(capsys, "data", "build", "--test-per-class", "3", "--rho", "0.9", "--out", data)
    assert code == 0, err
    assert (data / "manifest.json").is_file()
    code, out, err = run_cli(capsys, "train", "--data", data, "--out", model, "--epochs", "1", "--device", "cpu")
    assert code == 0, err
    card = json.loads((model / "model.json").read_text())
    assert card["architecture"]["name"] == "cnn" and card["input_shape"] == [1, 28, 28]
    code, out, err = run_cli(capsys, "shortcut", "--data", data, "--model", f"auditnn:{model}", "--out", tmp_path / "r")
    assert code == 0, err
    rows = json.loads((tmp_path / "r" / "report.json").read_text())["results"]["shortcut"]["rows"]
    assert rows[0]["rho"] == 0.9 and rows[0]["training"] is None


def test_shortcut_settings_that_contradict_a_built_dataset_exit_2_naming_both(capsys, tmp_path):
    data = tmp_path / "data"
    code, _, err = run_cli(capsys, "data", "build", "--tag", "boat", "--test-per-class", "3", "--out", data)
    assert code == 0, err
    size = json.loads((data / "manifest.json").read_text())["shortcut"]["size"]
    for extra, needles in (
        (["--tag", "background"], ["'background'", "'boat'"]),
        (["--size", str(size + 1)], [f"size {size + 1}", f"size {size}"]),
        (["--target-class", "3"], ["target_class 3", "None"]),
    ):
        code, _, err = run_cli(
            capsys, "shortcut", "--data", data, *FAST, "--model", "mlp", *extra, "--out", tmp_path / "o"
        )
        assert_usage_error(code, err, str(data), *needles)
        assert files_under(tmp_path / "o") == []
    code, out, err = run_cli(
        capsys, "shortcut", "--data", data, *FAST, "--model", "mlp", "--size", str(size), "--out", tmp_path / "r"
    )
    assert code == 0, err
    assert "Shortcut reliance: boat on digits" in out


BAD_INPUTS = [
    (["--tag", "logo"], ["'logo'", "watermark, boat or background"]),
    (["--base", "pictures"], ["'pictures'", "digits, shapes"]),
    (["--model", "vgg"], ["'vgg'", "mlp, cnn, resnet18, factory:pkg.module:function"]),
    (["--device", "tpu"], ["'tpu'", "auto, cpu, cuda or cuda:N"]),
    (["--rho", "1.5"], ["rho 1.5", "0 <= rho <= 1"]),
    (["--rho", "0.9,high"], ["'high'", "fractions"]),
    (["--epochs", "0"], ["epochs 0", "at least 1"]),
    (["--epochs", "many"], ["'many'"]),
    (["--position", "middle"], ["'middle'", "top-left"]),
    (["--target-class", "12"], ["target class 12", "0 .. 9"]),
    (["--size", "40"], ["size 40", "28x28"]),
    (["--data", "no/such/folder"], ["no/such/folder", "manifest.json"]),
    (["--model", "auditnn:no/such/run"], ["no/such/run", "model.json"]),
    (["--attribution", "saliency"], ["'saliency'", "gradxinput"]),
]


@pytest.mark.parametrize("extra,needles", BAD_INPUTS, ids=[" ".join(b[0]) for b in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, extra, needles):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "shortcut", *FAST, *extra, "--out", out)
    assert_usage_error(code, err, *needles)
    assert files_under(out) == []


def test_cuda_request_without_cuda_is_a_usage_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code, _, err = run_cli(capsys, "shortcut", "--device", "cuda", "--out", tmp_path / "o")
    assert_usage_error(code, err, "'cuda'", "CUDA is not available", "--device cpu")


def test_output_folder_that_cannot_be_written_is_a_usage_error(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "shortcut", *FAST, "--out", blocker / "sub")
    assert_usage_error(code, err, str(blocker / "sub"), "cannot be written")


def test_empty_or_single_class_data_folder_is_a_usage_error(capsys, tmp_path):
    (tmp_path / "images" / "only").mkdir(parents=True)
    code, _, err = run_cli(
        capsys, "shortcut", "--base", f"imagefolder:{tmp_path / 'images'}", *FAST, "--out", tmp_path / "o"
    )
    assert_usage_error(code, err, "imagefolder", "at least 2 class")


def test_ctrl_c_during_training_leaves_no_partial_report(capsys, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("auditnn.train.fit", interrupted)
    code, _, err = run_cli(capsys, "shortcut", *FAST, "--out", tmp_path)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert not any(p.name in {"report.json", "metrics.csv", "summary.md"} for p in files_under(tmp_path))


def test_internal_error_exits_3_with_one_line(capsys, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("auditnn.checks.shortcut.measure_reliance", broken)
    code, _, err = run_cli(capsys, "shortcut", *FAST, "--out", tmp_path)
    assert code == 3 and "internal error: RuntimeError: boom" in err and "Traceback" not in err


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "auditnn", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "shortcut" in done.stdout


def test_a_background_tag_for_a_given_grayscale_model_says_the_tag_makes_rgb_images(capsys, tmp_path, monkeypatch):
    from auditnn.models.load import PixelModel, save_model_dir
    from auditnn.models.zoo import build_model

    card = {
        "architecture": {"name": "mlp", "width": 8},
        "input_shape": [1, 28, 28],
        "classes": [str(k) for k in range(10)],
        "normalization": {"mean": [0.0], "std": [1.0]},
    }
    save_model_dir(PixelModel(build_model("mlp", 1, 28, 10, 8), [0.0], [1.0]), card, tmp_path / "gray")
    (tmp_path / "gray_factory.py").write_text(
        "import torch.nn as nn\n\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"
    )
    monkeypatch.chdir(tmp_path)  # the factory module imports from the working folder
    for spec, takes in (
        (f"auditnn:{tmp_path / 'gray'}", "takes 1 channel"),
        ("factory:gray_factory:make", "fails on them"),
    ):
        code, _, err = run_cli(
            capsys, "shortcut", "--tag", "background", "--model", spec, *FAST, "--out", tmp_path / "o"
        )
        assert_usage_error(code, err, "tag 'background' makes the images RGB (3 channels)", takes)
        assert files_under(tmp_path / "o") == []


@pytest.mark.parametrize(
    "extra,flag",
    [
        (["--rho", "0.5,0.9"], "--rho 0.5,0.9"),
        (["--attribution", "ig"], "--attribution ig"),
        (["--test-per-class", "5"], "--test-per-class 5"),
        (["--width", "8"], "--width 8"),
        (["--epochs", "3"], "--epochs 3"),
        (["--groups", "g.csv", "--attribute", "side", "--size", "5"], "--size 5"),
    ],
)
def test_options_your_images_do_not_use_are_refused_not_ignored(capsys, tmp_path, extra, flag):
    """Review of issue 11: these exited 0 with the option silently ignored."""
    torch.save({"images": torch.rand(6, 1, 28, 28), "labels": torch.arange(6) % 2}, tmp_path / "x.pt")
    code, _, err = run_cli(
        capsys,
        "shortcut",
        "--model",
        "factory:tiny_factory:make",
        "--data",
        f"tensors:{tmp_path / 'x.pt'}",
        *extra,
        "--out",
        str(tmp_path / "out"),
    )
    assert_usage_error(code, err, f"{flag} applies to")
    assert not (tmp_path / "out").exists()


def test_weights_beside_an_auditnn_model_are_refused(tmp_path):
    from auditnn.models.user import load_user_model
    from auditnn.spec import ModelSpec
    from auditnn.train import TrainConfig, train_classifier

    model, _, card = train_classifier(
        torch.rand(20, 1, 6, 6),
        torch.arange(20) % 2,
        ["a", "b"],
        "mlp",
        TrainConfig(epochs=1),
        torch.device("cpu"),
        width=4,
    )
    save_model_dir(model, card, tmp_path / "m")
    with pytest.raises(
        AuditError, match=r"carries its weights in model.pt; drop --weights \(audit file: model.weights\)"
    ):
        load_user_model(ModelSpec(f"auditnn:{tmp_path / 'm'}", str(tmp_path / "w.pt")), num_classes=2, channels=1)
