"""auditnn shortcut --mitigate: one model per method on the same planted data, its numbers recomputed from the saved
models; the audit file's mitigation; the refusals (exit 2, one line)."""

import json

import pandas as pd
import pytest
import torch
from helpers import assert_usage_error, files_under, run_cli
from test_groups_mitigate import BIRDS, FACTORY, PLACES, birds

from auditnn.data.controlled import BuildConfig, build_controlled
from auditnn.data.sources import load_source
from auditnn.models import load_model_dir, save_model_dir
from auditnn.shortcut.metrics import measure_reliance
from auditnn.shortcut.mitigate import train_methods
from auditnn.train import TrainConfig, train_classifier

TINY = ("--model", "mlp", "--width", "8", "--epochs", "1", "--test-per-class", "3", "--device", "cpu")
SCALAR_METRICS = ("reliance", "worst_group_accuracy", "aligned_accuracy", "conflicting_accuracy", "clean_accuracy")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """300 of the built-in digits as a tensors file: a validation split of 27 images."""
    folder = tmp_path_factory.mktemp("base")
    images = load_source("digits").train
    torch.save({"images": images.images[:300], "labels": images.labels[:300]}, folder / "base.pt")
    return f"tensors:{folder / 'base.pt'}"


def _rows(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv")


def test_one_column_per_method_in_order_and_each_number_is_measure_reliance_on_the_saved_model(capsys, tmp_path, base):
    methods = ["jtt", "erm", "reweight", "groupdro", "dfr"]
    code, out, err = run_cli(
        capsys, "shortcut", *TINY, "--base", base, "--rho", "0.8", "--mitigate", ",".join(methods), "--out", tmp_path
    )
    assert code == 0, err
    header = next(line for line in out.splitlines() if "metric" in line)
    assert [header.index(m) for m in methods] == sorted(header.index(m) for m in methods)
    assert "training seconds" in out
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["results"]["shortcut"]["rows"]
    assert [r["method"] for r in rows] == methods
    assert rows[0]["training"]["errors"] > 0 and rows[4]["training"]["dfr"]["groups"] == 2
    csv = _rows(tmp_path)
    assert set(csv.method) == set(methods) and len(csv) == len(methods) * len(csv[csv.method == "erm"])
    dataset = build_controlled(BuildConfig(base=base, rho=0.8, seed=0, test_per_class=3), load_source(base, seed=0))
    for method in methods:
        model, card = load_model_dir(tmp_path / "models" / "rho-0.8" / method)
        assert card["training"]["method"] == method
        again = measure_reliance(model, dataset)
        mine = csv[csv.method == method].set_index("metric").value
        for metric in SCALAR_METRICS:
            assert mine[metric] == pytest.approx(getattr(again, metric), abs=1e-9), (method, metric)
    erm, dfr = (load_model_dir(tmp_path / "models" / "rho-0.8" / m)[0] for m in ("erm", "dfr"))
    first = [p for n, p in erm.named_parameters() if not n.startswith("net.3")]  # DFR keeps the features
    assert all(
        torch.equal(a, b)
        for a, b in zip(first, [p for n, p in dfr.named_parameters() if not n.startswith("net.3")], strict=True)
    )


def test_methods_train_the_models_the_check_measures_and_erm_is_plain_training(base):
    """train_methods' ERM is train_classifier with the same seed; reweight differs from it."""
    dataset = build_controlled(BuildConfig(base=base, rho=0.9, seed=0, test_per_class=3), load_source(base, seed=0))
    config = TrainConfig(epochs=1, seed=0)
    trained = train_methods(["erm", "reweight"], dataset, "mlp", config, torch.device("cpu"), width=8)
    plain, _, _ = train_classifier(
        dataset.train.images, dataset.train.labels, dataset.classes, "mlp", config, torch.device("cpu"), width=8
    )
    for a, b in zip(trained["erm"].model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    reweighted = next(trained["reweight"].model.parameters())
    assert not torch.equal(reweighted, next(plain.parameters()))


def test_a_rho_sweep_draws_one_curve_per_method(capsys, tmp_path, base):
    code, out, err = run_cli(
        capsys, "shortcut", *TINY, "--base", base, "--rho", "0.6,0.8", "--mitigate", "erm,jtt", "--out", tmp_path
    )
    assert code == 0, err
    assert "rho 0.60 erm" in out and "rho 0.80 jtt" in out
    page = (tmp_path / "report.html").read_text()
    assert 'alt="worst-group accuracy against rho, per method"' in page
    assert 'alt="reliance against rho, per method"' in page
    assert 'alt="reliance against rho"' not in page  # the per-tag curve would mix the methods


def test_an_audit_files_mitigation_is_judged_on_that_methods_row(capsys, tmp_path, base):
    (tmp_path / "audit.toml").write_text(
        f"[model]\nsource = 'mlp'\nwidth = 8\n[data]\nsource = '{base}'\n"
        "test_per_class = 3\n[run]\ndevice = 'cpu'\n"
        "[[check]]\nkind = 'shortcut'\ntag = 'watermark'\nrho = 0.8\nepochs = 1\nmitigation = 'reweight'\n"
        "max_reliance = 1.0\n"
    )
    code, out, err = run_cli(capsys, "audit", tmp_path / "audit.toml", "--out", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    verdict = report["results"]["verdict"]["rows"]
    row = next(r for r in report["metrics"] if r["metric"] == "reliance")
    assert row["method"] == "reweight" and verdict[0]["measured"] == row["value"]


@pytest.mark.parametrize(
    "extra,needles",
    [
        (["--mitigate", "erm,erx"], ["'erx' is unknown", "allowed:", "groupdro"]),
        (["--mitigate", "erm,jtt,erm"], ["'erm' twice"]),
        (["--mitigate", "jtt", "--upweight", "0.5"], ["upweight 0.5", ">= 1"]),
        (["--upweight", "5"], ["--upweight (audit file: upweight) 5.0 applies to jtt", "add jtt"]),
        (["--mitigate", "erm", "--groupdro-eta", "0.1"], ["--groupdro-eta (audit file: groupdro_eta) 0.1", "groupdro"]),
        (["--mitigate", "erm", "--model", "auditnn:nowhere"], ["mitigation", "trained already", "architecture"]),
    ],
)
def test_bad_mitigation_input_exits_2_with_one_line(capsys, tmp_path, base, extra, needles):
    args = ["--model", "mlp", "--width", "8", "--epochs", "1", "--test-per-class", "3", "--device", "cpu"]
    if "--model" in extra:
        args = args[2:]
    code, _, err = run_cli(capsys, "shortcut", *args, "--base", base, *extra, "--out", tmp_path / "o")
    assert_usage_error(code, err, *needles)
    assert files_under(tmp_path / "o") == []


@pytest.fixture(scope="module")
def user_files(tmp_path_factory, base):
    folder = tmp_path_factory.mktemp("user")
    data = torch.load(base.removeprefix("tensors:"))
    torch.save({"images": data["images"][:40], "labels": data["labels"][:40]}, folder / "images.pt")
    model, _, card = train_classifier(
        data["images"][:40],
        data["labels"][:40],
        [str(k) for k in range(10)],
        "mlp",
        TrainConfig(epochs=1),
        torch.device("cpu"),
        width=8,
    )
    save_model_dir(model, card, folder / "model")
    return folder


@pytest.mark.parametrize(
    "method,needles",
    [
        ("dfr", ["--mitigate dfr", "no --groups", "allowed: --groups"]),
        ("reweight", ["--mitigate reweight", "group labels", "allowed with your images: dfr"]),
        ("jtt", ["--mitigate jtt", "from scratch", "allowed with your images: dfr"]),
    ],
)
def test_your_images_take_dfr_with_groups_only(capsys, tmp_path, user_files, method, needles):
    code, _, err = run_cli(
        capsys,
        "shortcut",
        "--model",
        f"auditnn:{user_files / 'model'}",
        "--data",
        f"tensors:{user_files / 'images.pt'}",
        "--mitigate",
        method,
        "--device",
        "cpu",
        "--out",
        tmp_path / "o",
    )
    assert_usage_error(code, err, *needles)
    assert files_under(tmp_path / "o") == []


@pytest.fixture
def birds_project(tmp_path, monkeypatch):
    """The dfr branch's annotated birds (tests/test_groups_mitigate.py): images, metadata CSV and a shortcut model."""
    images, labels, places = birds()
    torch.save({"images": images, "labels": labels, "classes": BIRDS}, tmp_path / "birds.pt")
    rows = ["index,label,place"] + [f"{i},{int(labels[i])},{PLACES[int(places[i])]}" for i in range(len(labels))]
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "mitigate_birds_factory.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_your_images_with_groups_pass_dfr_through_to_the_groups_check(capsys, birds_project):
    """The dfr branch's annotated birds: `shortcut --groups ... --mitigate dfr` is its groups check with mitigation."""
    code, out, err = run_cli(
        capsys,
        "shortcut",
        "--model",
        "factory:mitigate_birds_factory:make",
        "--data",
        "tensors:birds.pt",
        "--groups",
        "meta.csv",
        "--attribute",
        "place",
        "--associate",
        "water:waterbird,land:landbird",
        "--mitigate",
        "dfr",
        "--device",
        "cpu",
        "--out",
        "out",
    )
    assert code == 0, err
    report = json.loads((birds_project / "out" / "report.json").read_text())
    assert report["config"]["checks"][0]["settings"]["mitigation"] == "dfr"
    worst = {r["method"]: r["value"] for r in report["metrics"] if r["metric"] == "worst_group_accuracy"}
    assert set(worst) == {"erm", "dfr"} and worst["dfr"] > worst["erm"]
    assert (birds_project / "out" / "last_layer.safetensors").is_file()


def test_a_dfr_fit_that_did_not_converge_on_planted_data_is_said(capsys, tmp_path, base, monkeypatch):
    """Review: the groups path warned dfr_not_converged, the planted path recorded converged: false silently."""
    import auditnn.shortcut.dfr as dfr

    monkeypatch.setattr(dfr, "MAX_ITER", 1)
    code, _, err = run_cli(capsys, "shortcut", *TINY, "--base", base, "--mitigate", "dfr", "--out", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["results"]["shortcut"]["rows"][0]["training"]["dfr"]["converged"] is False
    assert [w["code"] for w in report["warnings"]] == ["dfr_not_converged"]


def test_the_curves_against_rho_are_drawn_in_rho_order_whatever_the_order_given(monkeypatch):
    """Review: --rho 0.99,0.5,0.9 drew a zigzag: the series kept the order given."""
    from auditnn.report import html

    drawn = []
    monkeypatch.setattr(html.plots, "line_plot", lambda series, *a: drawn.append(series) or b"png")
    rows = [
        {"rho": rho, "method": "erm", "dataset": {"shortcut": {"tag": "watermark"}},
         "metrics": {"reliance": rel, "worst_group_accuracy": 1 - rel}}
        for rho, rel in ((0.99, 0.9), (0.5, 0.1), (0.9, 0.6))
    ]  # fmt: skip
    report = type("R", (), {"results": {"shortcut": {"rows": rows}}})()
    html._mitigation_figures(report, {}, [])
    assert drawn[0]["erm"] == ([0.5, 0.9, 0.99], [0.1, 0.6, 0.9])


def test_your_images_refuse_a_from_scratch_method_setting(capsys, birds_project):
    """JTT and group DRO settings apply to methods that train on planted data; with your images they are refused."""
    code, _, err = run_cli(
        capsys,
        "shortcut",
        "--model",
        "factory:mitigate_birds_factory:make",
        "--data",
        "tensors:birds.pt",
        "--groups",
        "meta.csv",
        "--attribute",
        "place",
        "--mitigate",
        "dfr",
        "--upweight",
        "5",
        "--device",
        "cpu",
        "--out",
        "out",
    )
    assert_usage_error(code, err, "--upweight 5.0 applies to", "allowed: leave --upweight out")
    assert not (birds_project / "out").exists()
