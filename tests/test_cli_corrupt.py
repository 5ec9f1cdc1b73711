"""auditnn corrupt end to end: tables, rows and the HTML page; the baseline's CE and mCE recomputed from two reports'
rows; the gate (with --baseline) and an audit file on these rows; torchrun; and every bad input as one line, exit 2,
nothing written. The corruptions are fakes of known effect put in the registry (as in test_corrupt.py)."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import assert_usage_error, files_under, run_cli

from auditnn.corruptions.base import CORRUPTIONS, Corruption
from auditnn.data.sources import load_source
from auditnn.models import load_model_dir, save_model_dir
from auditnn.train import TrainConfig, train_classifier

FAKES = """
import torch
import auditnn.corruptions.families  # the real ones first: each fake then replaces one
from auditnn.corruptions.base import CORRUPTIONS, Corruption

def _noise(x, s, g):
    return x + 0.15 * s * torch.randn(x.shape, generator=g, device=x.device)

FAKES = {
    "brightness": (False, False, lambda x, s, g: x * 0),
    "contrast": (False, False, lambda x, s, g: (x - 0.5) * (1 - 0.15 * s) + 0.5),
    "gaussian_noise": (False, True, _noise),
    "saturate": (True, False, lambda x, s, g: x * 0 + 1),
}

def register_fakes(put=CORRUPTIONS.__setitem__):
    for name, (held_out, random, fn) in FAKES.items():
        put(name, Corruption(name, "digital", held_out, random, fn))
"""
NAMES = "brightness,contrast,gaussian_noise,saturate"
BENCH = ("brightness", "contrast", "gaussian_noise")
SWEEP = ("--corruptions", NAMES, "--severities", "1,3", "--device", "cpu", "-q")


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    space: dict = {}
    exec(FAKES, space)  # noqa: S102 - the fakes' one source, also run by the torchrun processes below
    space["register_fakes"](lambda name, entry: monkeypatch.setitem(CORRUPTIONS, name, entry))
    assert isinstance(CORRUPTIONS["saturate"], Corruption)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two mlps (widths 8 and 16) as model folders, 40 digits as a tensors file, and 40 others of the same count."""
    root = tmp_path_factory.mktemp("corrupt")
    digits = load_source("digits").train
    pick = torch.randperm(len(digits.labels), generator=torch.Generator().manual_seed(0))
    for name, index in (("images", pick[:40]), ("other", pick[40:80])):
        torch.save({"images": digits.images[index], "labels": digits.labels[index]}, root / f"{name}.pt")
    for width in (8, 16):
        torch.manual_seed(width)
        model, _, card = train_classifier(
            digits.images[pick[100:600]],
            digits.labels[pick[100:600]],
            digits.classes,
            "mlp",
            TrainConfig(epochs=1),
            torch.device("cpu"),
            width=width,
        )
        save_model_dir(model, card, root / f"model{width}")
    return root


def _args(project, width=8, data="images"):
    return ("--model", f"auditnn:{project / f'model{width}'}", "--data", f"tensors:{project / f'{data}.pt'}", *SWEEP)


def _report(folder):
    return json.loads((folder / "report.json").read_text())


def _rows(report, metric):
    return {(r.get("corruption"), r.get("severity")): r["value"] for r in report["metrics"] if r["metric"] == metric}


@pytest.fixture(scope="module")
def reports(project, tmp_path_factory):
    """Model 8's report, then model 16's against it as the baseline (measured once for the tests below)."""
    out = tmp_path_factory.mktemp("reports")
    from auditnn.cli import main

    space: dict = {}
    exec(FAKES, space)  # noqa: S102
    saved = dict(CORRUPTIONS)
    space["register_fakes"]()
    try:
        assert main(["corrupt", *_args(project, 8), "--out", str(out / "a")]) == 0
        assert (
            main(
                ["corrupt", *_args(project, 16), "--baseline", str(out / "a" / "report.json"), "--out", str(out / "b")]
            )
            == 0
        )
    finally:
        CORRUPTIONS.clear()
        CORRUPTIONS.update(saved)
    return out


def _main(*args):
    return ["corrupt", *args]


def test_corrupt_prints_the_tables_and_its_accuracies_are_plain_torch_counts(capsys, project, tmp_path):
    code, out, err = run_cli(capsys, *_main(*_args(project), "--out", tmp_path))
    assert code == 0, err
    assert "Accuracy under corruption (40 test images," in out and "cifar-size constants" in out
    assert "Corruption summary" in out
    assert "saturate (held out)" in out
    report = _report(tmp_path)
    data = torch.load(project / "images.pt", weights_only=True)
    images, labels = data["images"].float() / (255 if data["images"].dtype == torch.uint8 else 1), data["labels"]
    model = load_model_dir(project / "model8")[0].eval()
    effect = {
        "brightness": lambda x, s: x * 0,
        "contrast": lambda x, s: (x - 0.5) * (1 - 0.15 * s) + 0.5,
        "saturate": lambda x, s: x * 0 + 1,
    }
    accuracy = _rows(report, "accuracy")
    with torch.no_grad():
        for name, fn in effect.items():
            for s in (1, 3):
                right = int((model(fn(images, s).clamp(0, 1)).argmax(1) == labels).sum())
                assert accuracy[(name, s)] == pytest.approx(right / 40, abs=1e-7)
        clean = int((model(images).argmax(1) == labels).sum())
    assert _rows(report, "clean_accuracy")[(None, None)] == pytest.approx(clean / 40, abs=1e-7)
    bench = [accuracy[(c, s)] for c in BENCH for s in (1, 3)]
    assert _rows(report, "mean_accuracy")[(None, None)] == pytest.approx(sum(bench) / len(bench), abs=1e-6)
    assert _rows(report, "mce_unnormalized")[(None, None)] == pytest.approx(1 - sum(bench) / len(bench), abs=1e-6)
    assert _rows(report, "held_out_mean_accuracy")[(None, None)] == pytest.approx(
        (accuracy[("saturate", 1)] + accuracy[("saturate", 3)]) / 2, abs=1e-6
    )
    assert set(_rows(report, "ece")) == {(None, 1), (None, 3)} and "mce" not in {r["metric"] for r in report["metrics"]}
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"corruption", "severity"} <= set(rows[0]) and len(rows) == len(report["metrics"])
    html = (tmp_path / "report.html").read_text()
    assert (
        "Accuracy against digital corruption severity." in html
        and "The first test image under every corruption." in html
    )
    grid = torch.load(tmp_path / "pictures.pt", weights_only=True)["corruption/grid"]
    assert grid.shape == (1 + 4 * 2, 1, 28, 28) and torch.equal(grid[1], torch.zeros(1, 28, 28))


def test_ce_and_mce_against_the_baseline_are_the_formulas_on_both_reports_rows(reports):
    a, b = _report(reports / "a"), _report(reports / "b")
    mine, theirs = _rows(b, "error"), _rows(a, "error")
    clean_b, clean_a = 1 - _rows(b, "clean_accuracy")[(None, None)], 1 - _rows(a, "clean_accuracy")[(None, None)]
    ce, relative = _rows(b, "ce"), _rows(b, "relative_ce")
    for name in (*BENCH, "saturate"):
        top, bottom = (sum(errors[(name, s)] for s in (1, 3)) for errors in (mine, theirs))
        assert ce[(name, None)] == pytest.approx(top / bottom, rel=1e-5)
        assert relative[(name, None)] == pytest.approx(
            (top - 2 * clean_b) / (bottom - 2 * clean_a), rel=1e-4, abs=1e-6
        )  # float32 shares: an exact 0 reads as 2e-7
    assert _rows(b, "mce")[(None, None)] == pytest.approx(sum(ce[(c, None)] for c in BENCH) / 3, rel=1e-6)
    assert _rows(b, "relative_mce")[(None, None)] == pytest.approx(sum(relative[(c, None)] for c in BENCH) / 3)
    assert b["results"]["corruption"]["baseline"]["model"] == a["results"]["corruption"]["model"]


def test_the_gate_judges_these_rows_and_compares_them_with_a_baseline(capsys, reports, tmp_path):
    policy = tmp_path / "audit.toml"
    policy.write_text(
        "[[check]]\nkind = 'corruption'\nname = 'sweep'\nmin_mean_accuracy = 0.0\n"
        "[[check]]\nkind = 'corruption'\nname = 'black'\ncorruption = 'brightness'\nseverity = 3\nmin_accuracy = 0.0\n"
        "[[check]]\nkind = 'corruption'\nname = 'calibration'\nseverity = 1\nmax_ece = 1.0\n"
    )
    a, b = _report(reports / "a"), _report(reports / "b")
    code, out, err = run_cli(
        capsys,
        "gate",
        reports / "b" / "report.json",
        "--policy",
        policy,
        "--baseline",
        reports / "a" / "report.json",
        "--max-drop",
        "0",
        "--out",
        tmp_path / "verdict",
    )
    mean_a, mean_b = (_rows(r, "mean_accuracy")[(None, None)] for r in (a, b))
    black_a, black_b = (_rows(r, "accuracy")[("brightness", 3)] for r in (a, b))
    ece_a, ece_b = (_rows(r, "ece")[(None, 1)] for r in (a, b))
    worse = mean_b < mean_a - 1e-7 or black_b < black_a - 1e-7 or ece_b > ece_a + 1e-7
    assert code == (1 if worse else 0), out + err
    assert f"baseline {mean_a:.4f}, change {mean_b - mean_a:+.4f}" in (tmp_path / "verdict" / "verdict.md").read_text()
    code, out, err = run_cli(capsys, "gate", reports / "b" / "report.json", "--policy", policy)
    assert code == 0, out + err  # every row found, each within its bound
    assert "not measured" not in out


def test_an_audit_file_measures_and_gates_a_corruption_check(capsys, project, tmp_path):
    (tmp_path / "audit.toml").write_text(
        f"[model]\nsource = 'auditnn:{project / 'model8'}'\n[data]\ndataset = 'tensors:{project / 'images.pt'}'\n"
        "[run]\ndevice = 'cpu'\n"
        f"[[check]]\nkind = 'corruption'\nname = 'sweep'\ncorruptions = '{NAMES}'\nseverities = '1,3'\n"
        "min_mean_accuracy = 0.0\n"
        "[[check]]\nkind = 'corruption'\nname = 'black'\ncorruptions = 'brightness'\nseverities = 2\n"
        "corruption = 'brightness'\nseverity = 2\nmin_accuracy = 1.0\n"
    )
    code, out, err = run_cli(capsys, "audit", tmp_path / "audit.toml", "-q", "--out", tmp_path / "out")
    assert code == 1, err  # the black images' accuracy is far below 1
    report = _report(tmp_path / "out")
    verdict = {r["check"]: (r["measured"], r["passed"]) for r in report["results"]["verdict"]["rows"]}
    black = next(r for r in report["metrics"] if r.get("check") == "black" and r["metric"] == "accuracy")
    assert verdict["black"] == (black["value"], False) and verdict["sweep"][1] is True
    assert report["results"]["corruption/black"]["corruptions"] == ["brightness"]
    assert report["results"]["corruption/black"]["severities"] == [2]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "black: accuracy against digital corruption severity." in html and "sweep: accuracy against" in html


WORKER = (
    FAKES
    + """
import sys
from auditnn.cli import main
register_fakes()
sys.exit(main(sys.argv[1:]))
"""
)


def test_torchrun_gives_exactly_the_numbers_of_one_process(project, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*_main(*_args(project)), "--batch-size", "16"]
    one = subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / "one")], env=env, timeout=240)
    assert one.returncode == 0
    many = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            *args,
            "--out",
            str(tmp_path / "many"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert many.returncode == 0, many.stderr[-2000:]
    a, b = _report(tmp_path / "one"), _report(tmp_path / "many")
    assert a["metrics"] == b["metrics"] and a["results"]["corruption"]["rows"] == b["results"]["corruption"]["rows"]
    assert torch.equal(
        *(torch.load(tmp_path / d / "pictures.pt", weights_only=True)["corruption/grid"] for d in ("one", "many"))
    )


@pytest.mark.parametrize(
    "option,value,needle",
    [
        ("--corruptions", "gaussian_noise,sepia", "corruption 'sepia' is unknown"),
        ("--severities", "0", "severity '0' is not allowed"),
        ("--severities", "1,6", "severity '6' is not allowed"),
        ("--severities", "x", "severity 'x' is not allowed"),
        ("--severities", "²", "severity '²' is not allowed"),
        ("--severities", "", "name none"),
        ("--corruptions", ",", "name none"),
        ("--corruptions", "benchmark,fog", "benchmark or all alone"),
        ("--batch-size", "8", "--batch-size 8; allowed: a multiple of 16"),
    ],
)
def test_a_bad_corruption_or_severity_exits_2_with_one_line(capsys, project, tmp_path, option, value, needle):
    code, _, err = run_cli(capsys, *_main(*_args(project), option, value, "--out", tmp_path / "out"))
    assert_usage_error(code, err, needle, "allowed")
    assert files_under(tmp_path / "out") == []


def _edited(reports, tmp_path, edit):
    report = _report(reports / "a")
    edit(report)
    (tmp_path / "base.json").write_text(json.dumps(report))
    return tmp_path / "base.json"


def _set_command(report):
    report["command"] = "attack"


def _three_classes(report):
    report["results"]["corruption"]["data"]["classes"] = ["0", "1", "2"]


@pytest.mark.parametrize(
    "edit,needle",
    [
        (_set_command, "is a report of 'auditnn attack'; allowed: a report.json written by auditnn corrupt"),
        (_three_classes, "has 3 classes, this model 10"),
    ],
    ids=["another command", "another class count"],
)
def test_a_baseline_of_another_command_or_class_count_exits_2(capsys, project, reports, tmp_path, edit, needle):
    base = _edited(reports, tmp_path, edit)
    code, _, err = run_cli(capsys, *_main(*_args(project, 16), "--baseline", base, "--out", tmp_path / "out"))
    assert_usage_error(code, err, needle)
    assert files_under(tmp_path / "out") == []


def test_a_baseline_on_other_images_exits_2_after_the_count_or_the_pixels_differ(capsys, project, reports, tmp_path):
    base = reports / "a" / "report.json"
    code, _, err = run_cli(capsys, *_main(*_args(project, 16, "other"), "--baseline", base, "--out", tmp_path / "o"))
    assert_usage_error(code, err, "was measured on other test images", "allowed: a corrupt report on the same")
    assert files_under(tmp_path / "o") == []
    fewer = tmp_path / "fewer.pt"
    data = torch.load(project / "images.pt", weights_only=True)
    torch.save({"images": data["images"][:30], "labels": data["labels"][:30]}, fewer)
    args = ("--model", f"auditnn:{project / 'model16'}", "--data", f"tensors:{fewer}", *SWEEP)
    code, _, err = run_cli(capsys, *_main(*args, "--baseline", base, "--out", tmp_path / "f"))
    assert_usage_error(code, err, "was measured on 40 test images, this run on 30")
    assert files_under(tmp_path / "f") == []


def test_a_baseline_without_a_chosen_corruption_or_severity_exits_2(capsys, project, reports, tmp_path):
    base = reports / "a" / "report.json"
    for option, value, needle in (
        ("--corruptions", "brightness,fog", "holds no fog at severity 1"),
        ("--severities", "1,2", "holds no brightness at severity 2"),
    ):
        args = [*_args(project, 16), option, value, "--baseline", base, "--out", tmp_path / "out"]
        if option == "--severities":
            args[args.index("--corruptions") + 1] = "brightness"
        code, _, err = run_cli(capsys, *_main(*args))
        assert_usage_error(code, err, needle, "allowed: a corrupt report measured with every chosen")
        assert files_under(tmp_path / "out") == []


def test_the_real_blurs_give_the_accuracy_of_a_plain_pass_over_their_seeded_batches(capsys, project, tmp_path):
    """defocus_blur (deterministic) and glass_blur (random: drawn again here batch by batch, 16 images each, from the
    seed the check documents) from the registry, not fakes: the streamed counts equal one plain pass per batch."""
    from auditnn.checks.corruption import draw_seed
    from auditnn.corruptions import corrupt

    args = ("--model", f"auditnn:{project / 'model8'}", "--data", f"tensors:{project / 'images.pt'}", "-q")
    code, out, err = run_cli(
        capsys,
        "corrupt",
        *args,
        "--corruptions",
        "defocus_blur,glass_blur",
        "--severities",
        "1,5",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--seed",
        "2",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    accuracy = _rows(_report(tmp_path), "accuracy")
    data = torch.load(project / "images.pt", weights_only=True)
    images, labels = data["images"].float() / (255 if data["images"].dtype == torch.uint8 else 1), data["labels"]
    model = load_model_dir(project / "model8")[0].eval()
    with torch.no_grad():
        for name in ("defocus_blur", "glass_blur"):
            for s in (1, 5):
                right = 0
                for begin in range(0, 40, 16):
                    generator = torch.Generator().manual_seed(draw_seed(2, name, s, begin))
                    x = corrupt(images[begin : begin + 16], name, s, generator)
                    right += int((model(x).argmax(1) == labels[begin : begin + 16]).sum())
                assert accuracy[(name, s)] == pytest.approx(right / 40, abs=1e-7)
    assert "Accuracy against blur corruption severity." in (tmp_path / "report.html").read_text()


def test_a_report_read_back_without_some_cells_still_renders_them_as_dashes(capsys, reports, tmp_path):
    """Report files come from forks: a section whose rows lack a chosen cell is drawn, not a crash (exit 3)."""
    report = _report(reports / "b")
    section = report["results"]["corruption"]
    section["rows"] = [r for r in section["rows"] if (r["corruption"], r["severity"]) != ("contrast", 3)]
    section["baseline"]["by_corruption"] = section["baseline"]["by_corruption"][1:]
    (tmp_path / "report.json").write_text(json.dumps(report))
    code, out, err = run_cli(capsys, "report", "show", tmp_path / "report.json")
    assert code == 0, err
    line = next(line for line in out.splitlines() if "contrast" in line)
    assert line.count("-") >= 2  # its severity 3 and its mean
    code, _, err = run_cli(capsys, "report", "html", tmp_path / "report.json")
    assert code == 0, err and (tmp_path / "report.html").is_file()
