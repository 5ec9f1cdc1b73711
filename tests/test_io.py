import os

import pytest

from auditnn.io import atomic_write_text, output_folder


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
