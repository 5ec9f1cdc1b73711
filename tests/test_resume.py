"""Issue 13 item 7: an interrupted attack resumes from the batches it finished: at most the batch in flight is
measured again, the numbers equal an uninterrupted run's, and a changed setting refuses to resume naming it."""

from __future__ import annotations

import json

import pytest
from helpers import assert_usage_error, run_cli

from auditnn.attacks.base import Attack
from auditnn.checkpoint import partial_root

TINY = ("--model", "mlp", "--width", "16", "--epochs", "1", "--test-per-class", "5", "--device", "cpu", "--seed", "0")
ATTACK = ("attack", "--method", "pgd", "--eps", "0,8/255", "--steps", "3", "--batch-size", "8", *TINY)  # 7 batches


@pytest.fixture
def counted(monkeypatch):
    """Attack.attack_batch, counting the batches measured (by index) and raising KeyboardInterrupt (what Ctrl-C
    raises) when asked to measure the batch in `stop_at`."""
    original = Attack.attack_batch
    calls: dict[str, object] = {"indices": [], "stop_at": None}

    def wrapped(self, model, images, labels, index):  # noqa: ANN001, ANN202
        if index == calls["stop_at"]:
            raise KeyboardInterrupt
        calls["indices"].append(index)  # type: ignore[union-attr]
        return original(self, model, images, labels, index)

    monkeypatch.setattr(Attack, "attack_batch", wrapped)
    return calls


def _rows(out):
    rows = json.loads((out / "report.json").read_text())["results"]["attack"]["rows"]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in rows]


def test_an_interrupted_attack_resumes_from_the_batches_it_finished(tmp_path, capsys, monkeypatch, counted):
    monkeypatch.setenv("AUDITNN_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, *ATTACK, "--out", str(tmp_path / "whole"))
    assert code == 0, err
    assert not partial_root(tmp_path / "whole").exists()  # a completed run leaves no batches behind
    runs_per_batch = len(counted["indices"]) // 7  # the attack and its sanity runs, each on every batch
    counted["indices"].clear()

    out = tmp_path / "cut"
    counted["stop_at"] = 4
    code, _, err = run_cli(capsys, *ATTACK, "--out", str(out))
    assert code == 130 and not out.exists(), err
    assert sorted(set(counted["indices"])) == [0, 1, 2, 3]
    assert len(list(partial_root(out).glob("*/batch-*.pt"))) == 4  # batch 4 was in flight: not saved
    counted["indices"].clear()
    counted["stop_at"] = None

    code, _, err = run_cli(capsys, *ATTACK, "--out", str(out), "--resume")
    assert code == 0, err
    assert counted["indices"] == [i for i in (4, 5, 6) for _ in range(runs_per_batch)]  # only the batches not done
    assert _rows(out) == _rows(tmp_path / "whole")
    assert not partial_root(out).exists()


def test_resuming_with_another_setting_is_refused_naming_it(tmp_path, capsys, monkeypatch, counted):
    monkeypatch.setenv("AUDITNN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "cut"
    counted["stop_at"] = 2
    code, _, _ = run_cli(capsys, *ATTACK, "--out", str(out))
    assert code == 130
    counted["stop_at"] = None
    changed = [a if a != "3" else "4" for a in ATTACK]  # --steps 4
    code, _, err = run_cli(capsys, *changed, "--out", str(out), "--resume")
    assert_usage_error(code, err, "--resume: the interrupted run of check 'attack'", "steps 3 (now 4)", "allowed:")
    assert not out.exists()
    # without --resume the old batches are dropped and the run starts over
    code, _, err = run_cli(capsys, *changed, "--out", str(out))
    assert code == 0, err


def test_resume_refuses_a_folder_with_no_earlier_run_and_save_adversarial(tmp_path, capsys):
    code, _, err = run_cli(capsys, *ATTACK, "--out", str(tmp_path / "none"), "--resume")
    assert_usage_error(code, err, "is neither a complete auditnn output folder nor the --out of an interrupted run")
    code, _, err = run_cli(
        capsys, *ATTACK, "--out", str(tmp_path / "o"), "--resume", "--save-adversarial", str(tmp_path / "adv")
    )
    assert_usage_error(code, err, "--resume with --save-adversarial", "allowed: one of the two")
