import os

import pytest
from helpers import assert_usage_error, run_cli

from auditnn.io import atomic_write_bytes, atomic_write_text, output_folder


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "b.txt", "w") as handle:
        handle.write("x")
    assert os.stat(tmp_path / "a.txt").st_mode == os.stat(tmp_path / "b.txt").st_mode
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_failed_run_removes_the_folders_it_created_but_nothing_else(tmp_path):
    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "new" / "deeper"):
            raise RuntimeError("failed before writing")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "kept"):
            raise RuntimeError("failed")
    assert (tmp_path / "kept").is_dir()


def test_a_file_that_cannot_be_written_is_a_usage_error_naming_it(tmp_path):
    from auditnn.errors import AuditError

    with pytest.raises(AuditError, match="nowhere/x.txt' cannot be written"):
        atomic_write_text(tmp_path / "nowhere" / "x.txt", "x")


def _disk_full(*args):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("failing", ["fsync", "replace"], ids=["write fails midway", "rename fails"])
def test_a_write_that_fails_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, monkeypatch, failing):
    target = tmp_path / "report.json"
    target.write_bytes(b"old contents")
    monkeypatch.setattr(os, failing, _disk_full)  # fsync: after the bytes are written; replace: after closing
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new contents, longer than the old")
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_failed_first_write_leaves_no_file_at_all(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _disk_full)
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "new.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_a_successful_write_replaces_the_contents_and_leaves_only_the_target(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"a much longer old content")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("command", ["show", "html"])
@pytest.mark.parametrize("kind,says", [("folder", "is a directory"), ("fifo", "is not a regular file")])
def test_a_report_that_is_not_a_file_is_named_for_what_it_is(capsys, tmp_path, command, kind, says):
    path = tmp_path / "run"
    path.mkdir() if kind == "folder" else os.mkfifo(path)  # a FIFO would block a reader that opened it
    code, _, err = run_cli(capsys, "report", command, path)
    assert_usage_error(code, err, f"report '{path}' {says}", "give a report.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
