"""Every command's output is unchanged for the same inputs and seed (issue 11's acceptance test).

Each command runs once, in-process, on CPU with seed 0 and tiny settings; what it prints on stdout, its exit code and
the files it writes (report.json, metrics.csv, summary.md, junit.xml, verdict.md, report.html) are compared with the
files under tests/golden/ after normalising only what legitimately changes between runs: run-id timestamps, `created`,
the `environment` block, `timings`, wall-clock fields, temporary paths, and report.json's `config` block. Wall-clock
cells change a table's column widths and with them where rich wraps a title, so terminal tables are compared cell by
cell without padding. report.html is stored as text with each embedded picture replaced by its sha256 (pictures are
bit for bit the same on CPU). A difference fails with the first lines of a unified diff per file.

To write the golden files again (after a change that is meant to alter outputs, or a new torch):
    AUDITNN_UPDATE_GOLDEN=1 PYTHONPATH=src python -m pytest -q tests/test_outputs_unchanged.py
and review `git diff tests/golden` before committing it. Numbers differ across torch builds, so the test skips when
the running torch is not the one recorded in tests/golden/torch_version.txt.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from auditnn.cli import main

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("AUDITNN_UPDATE_GOLDEN") == "1"
TORCH_FILE = GOLDEN / "torch_version.txt"
DIFF_LINES = 30  # a failing comparison shows this many diff lines, not the whole file

# The model every command trains: tiny, so the whole file runs in well under 90 s on one core.
TINY = ("--model", "mlp", "--width", "16", "--epochs", "1", "--test-per-class", "3", "--device", "cpu", "--seed", "0")

# Keys whose values are wall-clock time or describe the machine, not the measurement;
# `config` is left out because issue 11 gives every command's config one shape.
VOLATILE_KEYS = {
    "created",
    "environment",
    "timings",
    "config",
    "seconds",
    "images_per_second",
    "optimization_seconds",
    "budget_bytes",  # a share of the memory free when the batch size was chosen
}
VOLATILE_METRICS = {"seconds", "images_per_second", "optimization_seconds"}  # metric rows of wall-clock time
VOLATILE_COLUMNS = {"time s", "img/s"}  # table columns of wall-clock time (terminal, markdown, HTML)
STAMP = re.compile(r"\d{8}-\d{6}")  # run ids end in YYYYmmdd-HHMMSS
WALL_CLOCK = [
    (re.compile(r"\(\d+(\.\d+)? s\)"), "(<S> s)"),  # the patch title's "(1.8 s)"
    (re.compile(r"[\d,]+ images/s"), "<N> images/s"),  # auditnn train's speed note
    (re.compile(r'(time|timestamp)="[^"]*"'), r'\1="<S>"'),  # junit.xml
    # the environment line of summary.md and report.html: hardware, versions, date
    (re.compile(r"device [^·]* · torch \S+ · auditnn \S+ · \S+"), "<ENVIRONMENT>"),
]
IMAGE = re.compile(r"data:image/[a-z]+;base64,([A-Za-z0-9+/=]+)")
LONG_FLOAT = re.compile(r"-?\d+\.\d{7,}(?:e-?\d+)?")  # a float written at full precision (JSON, CSV)
BOX_BORDER = re.compile(r"^[━─┏┳┓┡╇┩└┴┘┌┬┐├┼┤╭╮╰╯ ]+$")
CASES = (
    "shortcut_watermark",
    "attack_pgd_linf",
    "attack_pgd_targeted",
    "attack_fgsm",
    "attack_pgd_l2",
    "attack_patch",
    "data_build",
    "train",
    "shortcut_user",
    "audit",
    "gate",
    "report_show",
)
FILES = ("report.json", "metrics.csv", "summary.md", "junit.xml", "verdict.md", "report.html")

AUDIT = """
[model]
source = "auditnn:model"
[data]
source = "tensors:images.pt"
test_per_class = 3
[run]
seed = 0
device = "cpu"
[[check]]
kind = "clean"
min_accuracy = 0.1
[[check]]
kind = "attack"
method = "pgd"
eps = "2/255"
steps = 3
min_robust_accuracy = 0.05
[[check]]
kind = "attack"
method = "fgsm"
eps = "4/255"
min_robust_accuracy = 0.99
[[check]]
kind = "patch"
steps = 5
target = 2
max_target_success_rate = 0.95
[[check]]
kind = "shortcut"
tag = "watermark"
rho = 0.9
epochs = 1
max_reliance = 0.99
[[check]]
kind = "sensitivity"
tag = "watermark"
max_flip_rate = 0.99
[[check]]
kind = "groups"
groups = "groups.csv"
attribute = "side"
associate = "left:0,right:1"
min_worst_group_accuracy = 0.0
"""


def _images_file(folder: Path) -> tuple[Path, torch.Tensor]:
    """80 of the built-in digits (8 per class) as a tensors file, and their labels."""
    from auditnn.data.sources import load_source

    base = load_source("digits")
    split = base.test or base.train
    images, labels = split.images, split.labels
    keep = torch.cat([torch.nonzero(labels == k).flatten()[:8] for k in range(10)])
    path = folder / "images.pt"
    torch.save({"images": images[keep].clone(), "labels": labels[keep].clone()}, path)
    return path, labels[keep]


def _groups_file(path: Path, labels: torch.Tensor) -> None:
    """Every third image is 'left', the others 'right': groups of unequal size in every class."""
    lines = ["index,label,side"] + [f"{i},{int(y)},{'left' if i % 3 == 0 else 'right'}" for i, y in enumerate(labels)]
    path.write_text("\n".join(lines) + "\n")


def _cli(*args: Any) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert code in (0, 1), err.getvalue()
    return code, out.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[str, dict[str, tuple[int, str, Path | None]]]:
    """Every command once, in order: (the folder they ran in, name -> (exit code, stdout, output folder or None))."""
    recorded = TORCH_FILE.read_text().strip() if TORCH_FILE.is_file() else None
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        TORCH_FILE.write_text(torch.__version__ + "\n")
    elif recorded is None:
        pytest.fail(f"{TORCH_FILE} is missing; write the golden files with AUDITNN_UPDATE_GOLDEN=1")
    elif recorded != torch.__version__:
        pytest.skip(
            f"golden outputs were written with torch {recorded}, this is torch {torch.__version__}: numbers "
            "differ across torch builds (CI pins torch in constraints.txt)"
        )
    root = tmp_path_factory.mktemp("golden")
    found: dict[str, tuple[int, str, Path | None]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "200")
        mp.setenv("NO_COLOR", "1")
        mp.setenv("AUDITNN_NO_PROGRESS", "1")
        mp.setenv("AUDITNN_CACHE_DIR", str(root / "cache"))
        mp.delenv("GITHUB_STEP_SUMMARY", raising=False)
        mp.chdir(root)  # relative paths on the command line: the tables do not depend on where tmp is

        def run(name: str, *args: Any, out: str | None = None) -> None:
            code, stdout = _cli(*args, *(("--out", out) if out else ()))
            found[name] = (code, stdout, None if out is None else root / out)

        run("shortcut_watermark", "shortcut", "--tag", "watermark", *TINY, out="shortcut")
        run("attack_pgd_linf", "attack", "--method", "pgd", "--eps", "0,2/255,8/255", "--steps", "3", *TINY, out="pgd")
        run(
            "attack_pgd_targeted",
            "attack",
            "--method",
            "pgd",
            "--target",
            "3",
            "--eps",
            "0,4/255",
            "--steps",
            "3",
            "--restarts",
            "2",
            *TINY,
            out="pgd_targeted",
        )
        run("attack_fgsm", "attack", "--method", "fgsm", "--eps", "0,2/255,4/255", *TINY, out="fgsm")
        run(
            "attack_pgd_l2",
            "attack",
            "--method",
            "pgd",
            "--norm",
            "l2",
            "--eps",
            "0,0.5,1",
            "--steps",
            "3",
            *TINY,
            out="pgd_l2",
        )
        run("attack_patch", "attack", "--method", "patch", "--steps", "5", "--target", "2", *TINY, out="patch")
        run("data_build", "data", "build", "--test-per-class", "3", "--rho", "0.9", out="data")
        run(
            "train",
            "train",
            "--data",
            "data",
            "--model",
            "mlp",
            "--width",
            "16",
            "--epochs",
            "1",
            "--device",
            "cpu",
            out="model",
        )
        images, labels = _images_file(root)
        _groups_file(root / "groups.csv", labels)
        run(
            "shortcut_user",
            "shortcut",
            "--model",
            "auditnn:model",
            "--data",
            f"tensors:{images.name}",
            "--tag",
            "watermark",
            "--groups",
            "groups.csv",
            "--attribute",
            "side",
            "--associate",
            "left:0,right:1",
            "--device",
            "cpu",
            out="shortcut_user",
        )
        (root / "audit.toml").write_text(AUDIT)
        run("audit", "audit", "audit.toml", out="audit")
        baseline = json.loads((root / "audit" / "report.json").read_text())
        for row in baseline["metrics"]:  # a baseline whose clean accuracy was higher than today's by 0.25
            if row["section"] == "clean":
                row["value"] = min(1.0, row["value"] + 0.25)
        (root / "baseline.json").write_text(json.dumps(baseline))
        run("gate", "gate", "audit/report.json", "--policy", "audit.toml", "--baseline", "baseline.json", out="gate")
        run("report_show", "report", "show", "audit/report.json")
    return str(root), found


def _text(text: str, root: str) -> str:
    """Temporary paths, run-id timestamps and wall-clock figures in free text."""
    text = STAMP.sub("<STAMP>", text.replace(root, "<TMP>"))
    for pattern, replacement in WALL_CLOCK:
        text = pattern.sub(replacement, text)
    return text


def _masked(rows: list[list[str]]) -> list[list[str]]:
    """rows[0] is a table's header: the cells under a wall-clock column become <T>."""
    volatile = {i for i, name in enumerate(rows[0]) if name in VOLATILE_COLUMNS}
    return [rows[0]] + [["<T>" if i in volatile else cell for i, cell in enumerate(row)] for row in rows[1:]]


def _terminal(stdout: str) -> str:
    """rich output as paragraphs and '| cell | cell |' rows: wall-clock cells change a column's width and with it
    where a title wraps, so padding and wrapping are dropped; every word and cell is kept, in order."""
    blocks: list[str] = []
    paragraph: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if paragraph:
            blocks.append(" ".join(paragraph))
            paragraph.clear()
        if table:
            blocks.extend("| " + " | ".join(row) + " |" for row in _masked(table))
            table.clear()

    for line in stdout.splitlines():
        line = line.rstrip()
        if BOX_BORDER.match(line):
            continue
        if line[:1] in ("│", "┃"):
            if paragraph:
                flush()
            table.append([cell.strip() for cell in re.split("[│┃]", line)[1:-1]])
        elif line:
            if table:
                flush()
            paragraph.append(line.strip())
    flush()
    return "\n".join(blocks) + "\n"


def _markdown(text: str) -> str:
    """Pipe tables: the cells under wall-clock columns become <T>."""
    out, header = [], None
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if header is None:
                header = cells
            else:
                line = "| " + " | ".join(_masked([header, cells])[1]) + " |"
        elif not line.startswith("|"):
            header = None
        out.append(line)
    return "\n".join(out) + "\n"


def _html_table(match: re.Match) -> str:
    rows = [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", match.group(0))]
    if not rows or not rows[0]:
        return match.group(0)
    return (
        "<table>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in _masked(rows))
        + "</table>"
    )


def _html(page: str) -> str:
    """Each embedded picture becomes its sha256 (CPU makes them bit for bit); one line per tag, for a readable diff."""
    page = IMAGE.sub(lambda m: "sha256:" + hashlib.sha256(m.group(1).encode()).hexdigest(), page)
    page = re.sub(r"<table>.*?</table>", _html_table, page, flags=re.DOTALL)
    page = re.sub(
        r"<style>.*?</style>",
        lambda m: "<style>sha256:" + hashlib.sha256(m.group(0).encode()).hexdigest() + "</style>",
        page,
        flags=re.DOTALL,
    )
    return re.sub(r">\s*<", ">\n<", page) + "\n"


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):  # report.json's metric rows of wall-clock time go, like metrics.csv's
        return [
            _without_volatile(v) for v in value if not (isinstance(v, dict) and v.get("metric") in VOLATILE_METRICS)
        ]
    return value


def _report_json(text: str) -> str:
    return json.dumps(_without_volatile(json.loads(text)), indent=1, sort_keys=True) + "\n"


def _metrics_csv(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    metric = rows[0].index("metric")
    return "\n".join(",".join(row) for row in rows if row[metric] not in VOLATILE_METRICS) + "\n"


NORMALISERS = {
    "report.json": _report_json,
    "metrics.csv": _metrics_csv,
    "summary.md": _markdown,
    "verdict.md": _markdown,
    "junit.xml": lambda text: text,
    "report.html": _html,
}


def _normalised(case: tuple[int, str, Path | None], root: str) -> dict[str, str]:
    """golden file name -> normalised text, for one command's run."""
    code, stdout, folder = case
    found = {"stdout.txt": f"exit code {code}\n" + _terminal(_text(stdout, root))}
    if folder is not None:
        # An audit's per-check records are named by a hash of what each result depends on (tested in test_checks):
        # here only how many there are, of which kind of file.
        listed = (
            re.sub(r"^checks/[0-9a-f]{32}\.", "checks/<key>.", str(p.relative_to(folder)))
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        )
        found["files.txt"] = "".join(f"{name}\n" for name in sorted(listed))
        for name in FILES:
            if (folder / name).is_file():
                golden_name = name + ".txt" if name == "report.html" else name
                found[golden_name] = NORMALISERS[name](_text((folder / name).read_text(), root))
    return found


def _rounded(text: str) -> str:
    """Full-precision floats to 6 significant digits: their last float32 bits differ between CPUs (AVX-512 and AVX2
    kernels sum an L2 norm in another order); a changed figure moves far more than that."""
    return LONG_FLOAT.sub(lambda m: f"{float(m.group(0)):.6g}", text)


def _first_differences(name: str, expected: str, actual: str) -> str:
    diff = list(
        difflib.unified_diff(
            expected.splitlines(), actual.splitlines(), f"golden/{name}", f"now/{name}", lineterm="", n=1
        )
    )
    more = f"\n... {len(diff) - DIFF_LINES} more diff lines" if len(diff) > DIFF_LINES else ""
    return "\n".join(diff[:DIFF_LINES]) + more


@pytest.mark.parametrize("case", CASES)
def test_outputs_are_unchanged(runs, case):
    root, results = runs
    actual = _normalised(results[case], root)
    folder = GOLDEN / case
    if UPDATE:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, text in actual.items():
            (folder / name).write_text(text)
    expected = {p.name: p.read_text() for p in sorted(folder.glob("*"))} if folder.is_dir() else {}
    assert expected, f"no golden files in {folder}; write them with AUDITNN_UPDATE_GOLDEN=1"
    assert sorted(actual) == sorted(expected), "the command wrote other files than the golden run"
    differences = [
        _first_differences(f"{case}/{name}", _rounded(expected[name]), _rounded(actual[name]))
        for name in sorted(expected)
        if _rounded(expected[name]) != _rounded(actual[name])
    ]
    assert not differences, "outputs changed:\n" + "\n\n".join(differences)


def test_the_gate_measures_the_drop_from_the_baseline_the_test_wrote(runs):
    """The baseline's clean accuracy is today's + 0.25 (see `runs`): the gate must print that baseline and a change
    of -0.25, recomputed here from the audit's own report.json."""
    root, results = runs
    report = json.loads((Path(root) / "audit" / "report.json").read_text())
    clean = next(row["value"] for row in report["metrics"] if row["section"] == "clean")
    assert 0.0 < clean < 0.75  # neither 0 nor 1: a formula slip would show
    verdict = (Path(root) / "gate" / "verdict.md").read_text()
    assert f"baseline {clean + 0.25:.4f}, change -0.2500" in verdict
    assert results["gate"][0] == 1 and results["audit"][0] == 1
