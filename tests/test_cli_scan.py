"""auditnn scan end to end on a small tensors file: tables, report, page; and the bad inputs (exit 2, one line, no
files)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_usage_error, files_under, run_cli

from auditnn.data.controlled import BuildConfig, ShortcutConfig, build_controlled


@pytest.fixture(scope="module")
def planted_file(tmp_path_factory):  # noqa: ANN001, ANN201 - pytest fixture
    """Three digit classes, 24 training images each, watermarked at rho 0.95, as a tensors file."""
    ds = build_controlled(BuildConfig(shortcut=ShortcutConfig(tag="watermark"), rho=0.95))
    keep = torch.cat([(ds.train.labels == k).nonzero().flatten()[:24] for k in range(3)])
    path = tmp_path_factory.mktemp("scan") / "planted.pt"
    torch.save({"images": ds.train.images[keep], "labels": ds.train.labels[keep]}, path)
    return path


def test_scan_prints_tables_and_writes_report_and_page(capsys, tmp_path, planted_file) -> None:  # noqa: ANN001
    code, out, err = run_cli(
        capsys, "scan", f"tensors:{planted_file}", "--permutations", "100", "--folds", "3", "--out", tmp_path / "o"
    )
    assert code == 0, err
    assert "Scan: label information by family" in out and "accuracy lift per grid cell" in out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    section = report["results"]["scan"]
    assert section["n"] == 72 and section["permutations"] == 100 and len(section["heat"]) == 4
    assert section["strongest_region"] in ("cell 3,3", "corner bottom-right")
    rows = {r["metric"]: r["value"] for r in report["metrics"] if "group" not in r}
    regions = [s["lift"] for s in section["scores"] if s["region"]]
    assert rows["region_accuracy_lift"] == pytest.approx(max(regions))
    html = (tmp_path / "o" / "report.html").read_text()
    assert "scan heat map" in html


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--grid", "5"], ["grid 5 does not divide the 28x28 images"]),
        (["--permutations", "19"], ["permutations 19 cannot reach alpha 0.01", "allowed: permutations >= 100"]),
        (["--alpha", "1.5"], ["alpha 1.5"]),
        (["--folds", "1"], ["folds 1; allowed: at least 2"]),
        (["--opacity", "0.5"], ["with --tag"]),
    ],
)
def test_bad_scan_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, planted_file, extra, needles):  # noqa: ANN001, ANN201
    code, _, err = run_cli(capsys, "scan", f"tensors:{planted_file}", *extra, "--out", tmp_path / "o")
    assert_usage_error(code, err, *needles)
    assert files_under(tmp_path / "o") == []


def test_a_class_with_one_image_exits_2(capsys, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "one.pt"
    torch.save({"images": torch.rand(5, 1, 8, 8), "labels": torch.tensor([0, 0, 0, 0, 1])}, path)
    code, _, err = run_cli(capsys, "scan", f"tensors:{path}", "--grid", "2", "--folds", "2", "--out", tmp_path / "o")
    assert_usage_error(code, err, "class 1 has 1 image(s)")
    assert files_under(tmp_path / "o") == []


def test_data_without_labels_exits_2(capsys, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "nolabels.pt"
    torch.save({"images": torch.rand(4, 1, 8, 8)}, path)
    code, _, err = run_cli(capsys, "scan", f"tensors:{path}", "--out", tmp_path / "o")
    assert_usage_error(code, err, "has no 'labels'")


def test_an_audit_file_scan_check_gates_without_a_model(capsys, tmp_path, planted_file) -> None:  # noqa: ANN001
    # No [model]: the scan needs none, and none is trained (the report names no model). The planted corner's lift
    # breaks a tight region bound; the property bound is loose.
    (tmp_path / "audit.toml").write_text(
        f'[data]\nsource = "tensors:{planted_file}"\n[run]\ndevice = "cpu"\n'
        '[[check]]\nkind = "scan"\npermutations = 100\nfolds = 3\n'
        "max_region_accuracy_lift = 0.05\nmax_property_accuracy_lift = 0.99\n"
    )
    code, out, err = run_cli(capsys, "audit", tmp_path / "audit.toml", "--out", tmp_path / "out")
    assert code == 1, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    verdict = {r["metric"]: r for r in report["results"]["verdict"]["rows"]}
    section = next(v for k, v in report["results"].items() if k.startswith("scan/"))
    region = max(s["lift"] for s in section["scores"] if s["region"])
    prop = max(s["lift"] for s in section["scores"] if not s["region"])
    assert (
        verdict["region_accuracy_lift"]["measured"] == pytest.approx(region)
        and not verdict["region_accuracy_lift"]["passed"]
    )
    assert (
        verdict["property_accuracy_lift"]["measured"] == pytest.approx(prop)
        and verdict["property_accuracy_lift"]["passed"]
    )
