"""Issue 10, items 4-6: an interrupted, failing or concurrent run leaves its output folder absent, complete or as it
was before; only a real SIGINT or SIGTERM exits 130 or 143."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import assert_usage_error, files_under, run_cli

FACTORY = "import torch.nn as nn\n\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A factory model and six 8x8 images, made here: attacking them takes a fraction of a second."""
    (tmp_path / "tiny_factory.py").write_text(FACTORY)
    torch.manual_seed(0)
    torch.save({"images": torch.rand(6, 1, 8, 8), "labels": torch.tensor([0, 1, 0, 1, 0, 1])}, tmp_path / "data.pt")
    monkeypatch.chdir(tmp_path)  # factory modules import from the working folder
    return tmp_path


def attack(capsys, out: Path) -> tuple[int, str, str]:
    return run_cli(
        capsys,
        "attack",
        "--method",
        "fgsm",
        "--eps",
        "0,1/255",
        "--model",
        "factory:tiny_factory:make",
        "--data",
        "tensors:data.pt",
        "--device",
        "cpu",
        "--no-sanity",
        "--out",
        out,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in files_under(folder)}


def leftovers(project: Path) -> list[str]:
    """What the run left beside its output folder (lock files, staging folders): nothing, after any ending, but
    the batches an attack finished (kept for --resume, removed by a run that completes)."""
    return sorted(
        p.name
        for p in project.iterdir()
        if p.name not in {"tiny_factory.py", "data.pt", "out", "__pycache__"} and not p.name.endswith("auditnn-partial")
    )


@pytest.fixture
def signal_at_first_write(monkeypatch):
    """Send `signum` to this process just after the run's first output file appears. The test's own handler only
    catches a signal the CLI failed to handle (it would otherwise end pytest)."""
    import auditnn.io

    def arm(signum: int) -> None:
        real, sent = auditnn.io.atomic_write_bytes, []

        def write_then_signal(path, data, **kwargs):
            written = real(path, data, **kwargs)
            if not sent and "auditnn-partial" not in str(path):  # a report file, not a saved batch
                sent.append(path)
                os.kill(os.getpid(), signum)
            return written

        monkeypatch.setattr(auditnn.io, "atomic_write_bytes", write_then_signal)

    def unhandled(signum, frame):
        pytest.fail(f"signal {signum} reached the test: the CLI installed no handler for it")

    previous = {s: signal.signal(s, unhandled) for s in (signal.SIGINT, signal.SIGTERM)}
    yield arm
    for s, handler in previous.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_at_the_first_report_file_leaves_no_folder(capsys, project, signal_at_first_write, signum, code):
    signal_at_first_write(signum)
    exit_code, _, err = attack(capsys, project / "out")
    assert exit_code == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert f"interrupted by {signal.Signals(signum).name}" in lines[0] and "nothing was written to" in lines[0]
    assert "the batches finished are kept" in lines[0] and "--resume --out" in lines[0]
    assert not (project / "out").exists() and leftovers(project) == []


def test_a_signal_leaves_an_earlier_report_as_it_was(capsys, project, signal_at_first_write):
    assert attack(capsys, project / "out")[0] == 0
    before = snapshot(project / "out")
    assert "report.json" in before
    signal_at_first_write(signal.SIGTERM)
    exit_code, _, err = attack(capsys, project / "out")
    assert exit_code == 143 and "keeps the earlier run's files" in err
    assert snapshot(project / "out") == before and leftovers(project) == []


def test_an_error_while_rendering_html_leaves_no_folder(capsys, project, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("template broke")

    monkeypatch.setattr("auditnn.report.html.to_html", broken)
    exit_code, _, err = attack(capsys, project / "out")
    assert exit_code == 3 and "RuntimeError: template broke" in err
    assert not (project / "out").exists() and leftovers(project) == []


def test_a_rerun_replaces_an_earlier_report_as_a_whole(capsys, project):
    from auditnn.io import OUTPUT_MARKER, staged_folder

    with staged_folder(project / "out") as staging:  # an earlier run of another command, through the same path
        (staging / "patch.png").write_bytes(b"from an earlier patch run")
    exit_code, _, err = attack(capsys, project / "out")
    assert exit_code == 0, err
    assert sorted(snapshot(project / "out")) == sorted(
        [OUTPUT_MARKER, "metrics.csv", "pictures.pt", "report.html", "report.json", "summary.md"]
    )
    assert leftovers(project) == []


def test_an_empty_folder_is_used(capsys, project):
    (project / "out").mkdir()
    exit_code, _, err = attack(capsys, project / "out")
    assert exit_code == 0, err
    assert (project / "out" / "report.json").is_file() and leftovers(project) == []


@pytest.mark.parametrize(
    "files",
    [
        {"model.pt": b"precious", "models/my_weights.safetensors": b"x"},  # the reviewer's: names auditnn also writes
        {"report.json": b"{}", "metrics.csv": b"a,b"},  # a report an auditnn without the marker wrote, or a user copied
    ],
    ids=["users-model-files", "no-marker"],
)
def test_a_folder_auditnn_did_not_write_is_refused_and_kept(capsys, project, files):
    for name, data in files.items():
        (project / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (project / "out" / name).write_bytes(data)
    exit_code, _, err = attack(capsys, project / "out")
    assert_usage_error(exit_code, err, f"'{project / 'out'}'", "was not written by auditnn", "remove it")
    assert snapshot(project / "out") == files and leftovers(project) == []


def test_a_folder_holding_other_files_is_refused_and_kept(capsys, project):
    (project / "out").mkdir()
    (project / "out" / "notes.txt").write_text("mine")
    exit_code, _, err = attack(capsys, project / "out")
    assert_usage_error(exit_code, err, "'notes.txt'", "new or empty folder")
    assert snapshot(project / "out") == {"notes.txt": b"mine"} and leftovers(project) == []


def test_a_second_run_on_the_same_out_exits_2_naming_the_first_runs_pid(capsys, project):
    from auditnn.io import staged_folder

    with staged_folder(project / "out"):  # the first run, still writing
        exit_code, _, err = attack(capsys, project / "out")
    assert_usage_error(exit_code, err, f"'{project / 'out'}'", f"another auditnn run (pid {os.getpid()})")
    assert leftovers(project) == []


def test_a_stale_lock_and_staging_folder_of_a_killed_run_are_taken_over(capsys, project):
    from auditnn.io import sibling

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    sibling(project / "out", "lock").write_text(dead.stdout)
    stale = Path(f"{sibling(project / 'out', 'new')}-killed")
    stale.mkdir()
    (stale / "metrics.csv").write_text("half")
    exit_code, _, err = attack(capsys, project / "out")
    assert exit_code == 0, err
    assert (project / "out" / "report.json").is_file() and leftovers(project) == []


def test_an_eof_error_is_an_internal_error_not_an_interrupt(capsys, project, monkeypatch):
    def truncated(*args, **kwargs):
        raise EOFError("Ran out of input")

    monkeypatch.setattr("auditnn.cli.run.run_plan", truncated)
    exit_code, _, err = attack(capsys, project / "out")
    assert exit_code == 3 and "EOFError: Ran out of input" in err and "interrupted" not in err


def test_an_empty_npz_is_never_called_an_interrupt(capsys, project):
    (project / "empty.npz").write_bytes(b"")
    exit_code, _, err = run_cli(
        capsys,
        "attack",
        "--model",
        "factory:tiny_factory:make",
        "--data",
        "tensors:empty.npz",
        "--device",
        "cpu",
        "--out",
        project / "out",
    )
    assert exit_code in (2, 3) and "interrupted" not in err and "Traceback" not in err
    assert not (project / "out").exists()


IMPORT_THEN_SIGNAL = """
import importlib.abc, os, signal, sys
import auditnn.cli
assert "torch" not in sys.modules, "importing the CLI's entry point imported torch"

class SignalWhenTorchLoads(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            os.kill(os.getpid(), signal.{name})
        return None

sys.meta_path.insert(0, SignalWhenTorchLoads())
sys.exit(auditnn.cli.main(["attack", "--out", sys.argv[1]]))
"""


@pytest.mark.parametrize("name,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_torch_loads_exits_with_one_line(tmp_path, name, code):
    script = textwrap.dedent(IMPORT_THEN_SIGNAL).replace("{name}", name)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert done.returncode == code, done.stderr
    assert done.stderr.strip() == f"auditnn: error: interrupted by {name}; no report was written", done.stderr
    assert not (tmp_path / "out").exists()


def test_every_name_auditnn_writes_is_one_a_rerun_may_replace(tmp_path, digits_base):
    """A rerun replaces a folder holding the marker and only OUTPUT_NAMES, and refuses any other: each writer's
    names must be there. Each writes through staged_folder, as every command does."""
    from auditnn.attacks.patch import PatchResult, save_patch_png, save_patch_tensors
    from auditnn.checks import CheckResult
    from auditnn.data.controlled import BuildConfig, ShortcutConfig, build_controlled, save_controlled
    from auditnn.io import OUTPUT_NAMES, staged_folder
    from auditnn.models import save_model_dir
    from auditnn.report import write_report
    from auditnn.report.schema import Report
    from auditnn.runner import Outcome, write_outcome

    row = {
        "check": "clean",
        "kind": "accuracy",
        "metric": "accuracy",
        "measured": 0.5,
        "threshold": 0.9,
        "bound": "min",
        "passed": False,
        "note": "",
    }
    verdict = {"passed": False, "rows": [row], "failed_checks": ["clean"]}
    report = Report(
        command="audit",
        run_id="r",
        config={},
        environment={},
        seed=0,
        results={"verdict": verdict},
        metrics=[{"section": "accuracy", "metric": "accuracy", "value": 0.5}],
    )
    with staged_folder(tmp_path / "report") as staging:
        write_report(report, staging, pictures={"x": torch.zeros(1, 2, 2)})
        patch = PatchResult(torch.zeros(1, 2, 2), torch.ones(1, 2, 2), 0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.1, 1)
        save_patch_png(patch, staging / "patch.png")
        save_patch_tensors(patch, staging / "patch.pt")
    with staged_folder(tmp_path / "model") as staging:
        save_model_dir(torch.nn.Linear(2, 2), {}, staging)
    config = BuildConfig(base="digits", shortcut=ShortcutConfig(tag="watermark"), rho=0.9, seed=0, test_per_class=1)
    with staged_folder(tmp_path / "data") as staging:
        save_controlled(build_controlled(config, digits_base), staging)
    with staged_folder(tmp_path / "audit") as staging:  # an audit's records of its checks
        write_outcome(Outcome(report, records={"key": ("clean", CheckResult([], {}))}), staging)
    written = {p.name for folder in tmp_path.iterdir() for p in folder.iterdir()}
    assert written == OUTPUT_NAMES - {"models"}  # models/ is the shortcut command's folder of model folders


def test_the_folder_gets_the_mode_of_a_plain_mkdir_and_the_working_folder_is_refused(tmp_path, monkeypatch):
    from auditnn.errors import AuditError
    from auditnn.io import staged_folder

    with staged_folder(tmp_path / "out") as staging:
        (staging / "report.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    assert os.stat(tmp_path / "out").st_mode == os.stat(tmp_path / "plain").st_mode
    assert (tmp_path / "out" / "report.json").read_text() == "{}"
    monkeypatch.chdir(tmp_path / "out")
    for out in (".", ".."):  # renaming a new folder over them would pull the working folder from under the shell
        with pytest.raises(AuditError, match=f"'{out}' is a mount point or holds the working folder"):
            with staged_folder(out):
                pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "plain"]


def test_an_earlier_folder_set_aside_by_a_killed_run_is_put_back(tmp_path):
    """A run killed between its two renames leaves the earlier folder aside and no folder in place: the next run
    puts it back, so that its own failure leaves the earlier files where they were."""
    from auditnn.io import MARKER_TEXT, OUTPUT_MARKER, sibling, staged_folder

    aside = Path(f"{sibling(tmp_path / 'out', 'old')}-killed")
    aside.mkdir()
    (aside / OUTPUT_MARKER).write_text(MARKER_TEXT)
    (aside / "report.json").write_text("earlier")
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "out") as staging:
            (staging / "report.json").write_text("new")
            raise RuntimeError("failed")
    assert snapshot(tmp_path / "out") == {OUTPUT_MARKER: MARKER_TEXT.encode(), "report.json": b"earlier"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    os.rename(tmp_path / "out", aside)  # killed again; this time the next run succeeds and replaces the earlier files
    with staged_folder(tmp_path / "out") as staging:
        (staging / "report.json").write_text("new")
    assert snapshot(tmp_path / "out") == {OUTPUT_MARKER: MARKER_TEXT.encode(), "report.json": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_signal_the_caller_ignores_stays_ignored(capsys, project, signal_at_first_write):
    """A shell starts background jobs with SIGINT ignored: the CLI must not turn it back on."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        signal_at_first_write(signal.SIGINT)
        exit_code, _, err = attack(capsys, project / "out")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert exit_code == 0, err
    assert (project / "out" / "report.json").is_file() and leftovers(project) == []
