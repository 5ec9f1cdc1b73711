import json

import pytest
import torch
from helpers import assert_usage_error, files_under, run_cli

FAST = ("--epochs", "2", "--test-per-class", "4", "--device", "cpu")


@pytest.mark.parametrize("method,norm", [("fgsm", "linf"), ("pgd", "linf"), ("pgd", "l2")])
def test_attack_prints_the_table_and_writes_the_report(capsys, tmp_path, method, norm):
    steps = ("--steps", "3") if method == "pgd" else ()  # fgsm refuses PGD's settings
    code, out, err = run_cli(capsys, "attack", "--method", method, "--norm", norm, *steps, *FAST, "--out", tmp_path)
    assert code == 0, err
    assert f"Robust accuracy: {method.upper()} {norm}" in out
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["results"]["attack"]["rows"]
    assert [r["eps"] for r in rows] == sorted(r["eps"] for r in rows) and rows[0]["eps"] == 0
    assert rows[0]["robust_accuracy"] == rows[0]["clean_accuracy"]
    assert all(r["max_perturbation"] <= r["eps"] + 1e-6 for r in rows)
    robust = [r["robust_accuracy"] for r in rows]
    assert robust == sorted(robust, reverse=True)
    assert report["environment"]["device"] == "cpu" and report["config"]["checks"][0]["settings"]["norm"] == norm


def test_the_default_model_is_trained_once_then_reused(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "attack", "--method", "fgsm", "--eps", "0,4/255", *FAST, "--out", tmp_path / "a")
    assert code == 0
    code, out, _ = run_cli(capsys, "attack", "--method", "fgsm", "--eps", "0,4/255", *FAST, "--out", tmp_path / "b")
    assert code == 0 and "model cache" in out
    a, b = (json.loads((tmp_path / d / "report.json").read_text())["results"]["attack"]["rows"] for d in "ab")
    assert [r["robust_accuracy"] for r in a] == [r["robust_accuracy"] for r in b]


def test_patch_writes_the_patch_as_png_and_tensor(capsys, tmp_path):
    from PIL import Image

    code, out, err = run_cli(
        capsys, "attack", "--method", "patch", "--steps", "20", "--target", "2", *FAST, "--out", tmp_path
    )
    assert code == 0, err
    assert "Universal patch" in out and "noise patch (control)" in out
    saved = torch.load(tmp_path / "patch.pt", weights_only=True)
    side = round(0.3 * 28)
    assert saved["patch"].shape == (1, side, side) and saved["target"] == 2
    with Image.open(tmp_path / "patch.png") as picture:
        assert picture.size == (8 * side, 8 * side)
    section = json.loads((tmp_path / "report.json").read_text())["results"]["patch"]
    assert 0 <= section["target_success_rate"] <= 1 and section["target"] == 2
    assert section["images"] == "fitted on the training images, scored on the held-out test images"
    assert section["n_scored"] == section["data"]["n_test"] == 10 * 4 and f"{10 * 4} held-out images" in out


def test_a_patch_on_a_built_dataset_reports_the_images_it_was_fitted_and_scored_on(capsys, tmp_path):
    """On a controlled dataset the patch is fitted on a seeded half of the 10 x 3 stamp-free test images and
    scored on the other half: the section and its table say 15 scored, not the 30 test images."""
    data = tmp_path / "data"
    code, _, err = run_cli(capsys, "data", "build", "--test-per-class", "3", "--out", data)
    assert code == 0, err
    code, out, err = run_cli(
        capsys,
        "attack",
        "--method",
        "patch",
        "--steps",
        "5",
        "--data",
        data,
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    section = json.loads((tmp_path / "r" / "report.json").read_text())["results"]["patch"]
    assert (section["n_fit"], section["n_scored"], section["data"]["n_test"]) == (30 // 2, 30 - 30 // 2, 30 - 30 // 2)
    assert "15 held-out images" in out and "seeded half" in section["images"]


BAD = [
    (["--eps", "-0.1"], ["eps -0.1", "0 <= eps <= 1"]),
    (["--eps", "0,1.5"], ["eps 1.5", "0 <= eps <= 1"]),
    (["--method", "cw"], ["method 'cw'", "autoattack", "square or patch"]),
    (["--norm", "l1"], ["norm 'l1'", "linf or l2"]),
    (["--steps", "0"], ["steps 0", "at least 1"]),
    (["--method", "patch", "--patch-size", "1.5"], ["patch size 1.5", "(0, 1)"]),
    (["--method", "patch", "--patch-size", "0"], ["patch size 0", "(0, 1)"]),
    (["--target", "12"], ["target class 12", "0 .. 9"]),
    (["--method", "patch", "--target", "11"], ["target class 11", "0 .. 9"]),
    (["--target", "everyone"], ["target 'everyone'", "random, least-likely"]),
    (["--method", "fgsm", "--norm", "l2"], ["fgsm", "linf"]),
    (
        ["--method", "fgsm", "--restarts", "3"],
        ["method fgsm", "restarts 3 would be ignored", "or method apgd, "],
    ),
    (["--method", "fgsm", "--steps", "5"], ["method fgsm", "steps 5 would be ignored"]),
    (["--method", "fgsm", "--step-size", "0.01"], ["method fgsm", "step_size 0.01 would be ignored"]),
]


@pytest.mark.parametrize("extra,needles", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_attack_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, extra, needles):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "attack", *FAST, *extra, "--out", out)
    assert_usage_error(code, err, *needles)
    assert files_under(out) == []


def test_data_is_converted_to_the_input_a_model_declares(capsys, tmp_path):
    data, model = tmp_path / "data", tmp_path / "model"
    assert run_cli(capsys, "data", "build", "--tag", "background", "--test-per-class", "2", "--out", data)[0] == 0
    assert run_cli(capsys, "train", "--data", data, "--out", model, "--epochs", "1", "--device", "cpu")[0] == 0
    code, _, err = run_cli(
        capsys, "attack", "--model", f"auditnn:{model}", "--method", "fgsm", *FAST, "--out", tmp_path / "o"
    )
    assert code == 0, err
    described = json.loads((tmp_path / "o" / "report.json").read_text())["results"]["attack"]["data"]
    assert described["converted_from"] == [1, 28, 28] and described["converted_to"] == [3, 28, 28]


def test_compile_falls_back_with_one_warning_when_the_compiler_is_unavailable(capsys, tmp_path, monkeypatch):
    def unavailable(model, *args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this platform")

    monkeypatch.setattr("torch.compile", unavailable)
    code, _, err = run_cli(capsys, "attack", "--method", "fgsm", "--compile", *FAST, "--out", tmp_path)
    assert code == 0
    warning = [line for line in err.splitlines() if "compile_unavailable" in line]
    assert len(warning) == 1 and "Dynamo is not supported" in warning[0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["warnings"][0]["code"] == "compile_unavailable"


def test_on_the_default_model_robust_accuracy_ends_below_clean_and_is_the_worst_run(capsys, tmp_path):
    code, out, err = run_cli(capsys, "attack", "--eps", "0,8/255", "--steps", "3", *FAST, "--out", tmp_path)
    assert code == 0, err
    rows = json.loads((tmp_path / "report.json").read_text())["results"]["attack"]["rows"]
    top = rows[-1]
    assert top["robust_accuracy"] < top["clean_accuracy"]
    own = top["robust_accuracy_per_attack"]
    assert set(own) == {"pgd-3", "fgsm", "pgd-6"} and top["robust_accuracy"] <= min(own.values())
    assert "robust acc (worst)" in out and "pgd-6" in out


def test_a_targeted_run_says_how_many_points_it_left_out(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, "attack", "--target", "3", "--eps", "0,4/255", "--steps", "3", "--no-sanity", *FAST, "--out", tmp_path
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "report.json").read_text())["results"]["attack"]["rows"]
    # --test-per-class 4: four test images are of class 3, the target
    assert [r["left_out"] for r in rows] == [4, 4] and rows[0]["n"] == 36
    assert rows[0]["robust_accuracy"] == rows[0]["clean_accuracy"] and rows[0]["success_rate"] == 0
    assert "4 left out as label = target" in " ".join(out.split())


SQRT_FACTORY = """
import torch
import torch.nn as nn


class Sqrt(nn.Module):
    def forward(self, x):
        return x.sqrt()


def make():
    torch.manual_seed(0)
    return nn.Sequential(Sqrt(), nn.Flatten(), nn.Linear(64, 4))
"""


@pytest.mark.parametrize("norm,eps", [("l2", "0,1"), ("linf", "0,8/255")])
def test_a_model_with_infinite_input_gradients_is_attacked_and_flagged(capsys, tmp_path, monkeypatch, norm, eps):
    (tmp_path / "sqrt_factory.py").write_text(SQRT_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    images = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    images[:, :, :2] = 0  # black rows: d sqrt(x) / dx is infinite at 0
    from sqrt_factory import make

    with torch.no_grad():
        labels = make()(images).argmax(1)  # the model is right on every image before the attack
    torch.save({"images": images, "labels": labels, "classes": ["a", "b", "c", "d"]}, tmp_path / "data.pt")
    code, _, err = run_cli(
        capsys,
        "attack",
        "--model",
        "factory:sqrt_factory:make",
        "--data",
        f"tensors:{tmp_path / 'data.pt'}",
        "--norm",
        norm,
        "--eps",
        eps,
        "--steps",
        "5",
        "--device",
        "cpu",
        "--out",
        tmp_path / "out",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "zero_or_nan_gradients" in {w["code"] for w in report["warnings"]}
    clean, attacked = report["results"]["attack"]["rows"]
    assert clean["robust_accuracy"] == 1.0 and attacked["robust_accuracy"] < 1.0


def test_a_targeted_reports_rows_say_so_and_an_untargeted_check_does_not_judge_them(capsys, tmp_path):
    """The rows of `auditnn attack --target random` carry the target (and restarts): `auditnn gate` with an
    untargeted check at that eps finds no row of its own, and a targeted check finds the targeted figure."""
    code, _, err = run_cli(
        capsys,
        "attack",
        "--method",
        "pgd",
        "--steps",
        "3",
        "--restarts",
        "2",
        "--eps",
        "8/255",
        "--target",
        "random",
        *FAST,
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    rows = [r for r in report["metrics"] if r["section"] == "attack"]
    assert rows and all(r["target"] == "random" and r["restarts"] == 2 for r in rows)
    assert all(r["sanity"] is True and "step_size" not in r for r in rows)  # defaults: sanity runs on, default step
    assert all(r["target"] == "random" and r["restarts"] == 2 for r in report["results"]["attack"]["rows"])
    robust = next(r["value"] for r in rows if r["metric"] == "robust_accuracy")
    check = "[[check]]\nkind = 'attack'\nmethod = 'pgd'\neps = 0.03137254901960784\nsteps = 3\nrestarts = 2\n"
    (tmp_path / "untargeted.toml").write_text(check + "min_robust_accuracy = 0.0\n")
    (tmp_path / "targeted.toml").write_text(check + f"target = 'random'\nmin_robust_accuracy = {robust}\n")
    code, out, err = run_cli(
        capsys, "gate", str(tmp_path / "r" / "report.json"), "--policy", str(tmp_path / "untargeted.toml")
    )
    assert code == 1 and "not measured" in out + err
    code, out, err = run_cli(
        capsys, "gate", str(tmp_path / "r" / "report.json"), "--policy", str(tmp_path / "targeted.toml")
    )
    assert code == 0, out + err
