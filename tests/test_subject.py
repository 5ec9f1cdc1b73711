"""What an audit looks at: which images a trained architecture was fitted on, which it is scored on, and when a
cached model may stand in for training."""

import hashlib
import json

import pytest
import torch
from helpers import assert_usage_error, files_under, run_cli

from auditnn.checks.attack import AttackSettings
from auditnn.data import sources
from auditnn.errors import AuditError, InvariantError
from auditnn.plan import Check, Plan
from auditnn.runner import run_plan
from auditnn.spec import DataSpec, ModelSpec
from auditnn.subject import SubjectSpec, load_eval_data, resolve_subject
from auditnn.train import TrainConfig

CPU = torch.device("cpu")


def write_tensors(path, labels, seed=0):
    """len(labels) random 1x6x6 images, every one distinct, with the given labels."""
    images = torch.rand(len(labels), 1, 6, 6, generator=torch.Generator().manual_seed(seed))
    torch.save({"images": images, "labels": labels}, path)
    return images


def test_an_architecture_on_user_data_trains_and_scores_on_disjoint_stratified_splits(tmp_path):
    labels = torch.tensor([0] * 12 + [1] * 9 + [2] * 15)
    images = write_tensors(tmp_path / "d.pt", labels)
    data = load_eval_data(data=f"tensors:{tmp_path / 'd.pt'}", test_per_class=4, trains_model=True)
    assert torch.bincount(data.test_labels).tolist() == [4, 4, 4]
    assert torch.bincount(data.train_labels).tolist() == [8, 5, 11]
    position = {tuple(image.flatten().tolist()): i for i, image in enumerate(images)}
    train_index = [position[tuple(x.flatten().tolist())] for x in data.train_images]
    test_index = [position[tuple(x.flatten().tolist())] for x in data.test_images]
    assert not set(train_index) & set(test_index)
    assert sorted(train_index + test_index) == list(range(36))  # every image used, once
    assert labels[train_index].tolist() == data.train_labels.tolist()
    assert labels[test_index].tolist() == data.test_labels.tolist()
    assert [str(i) for i in test_index] == data.test_names
    assert not data.fitted_on_test
    assert data.description["n_train"] == 24 and data.description["n_test"] == 12


def test_a_trained_model_is_scored_on_every_user_image(tmp_path):
    labels = torch.tensor([0, 1, 2] * 5)
    write_tensors(tmp_path / "d.pt", labels)
    data = load_eval_data(data=f"tensors:{tmp_path / 'd.pt'}", test_per_class=4)
    assert data.test_labels.tolist() == labels.tolist() and data.fitted_on_test


def test_a_split_that_leaves_a_class_nothing_to_train_on_is_refused(tmp_path):
    write_tensors(tmp_path / "d.pt", torch.tensor([0] * 4 + [1] * 9))
    with pytest.raises(AuditError, match="class 0 has 4 image.*test_per_class = 4 leaves none"):
        load_eval_data(data=f"tensors:{tmp_path / 'd.pt'}", test_per_class=4, trains_model=True)


def test_an_architecture_is_never_trained_on_the_images_it_is_scored_on(tmp_path):
    write_tensors(tmp_path / "d.pt", torch.tensor([0, 1, 2] * 5))
    data = load_eval_data(data=f"tensors:{tmp_path / 'd.pt'}")
    with pytest.raises(InvariantError, match="scored on"):
        resolve_subject(ModelSpec("mlp"), data, TrainConfig(epochs=1), CPU)


def _fgsm_audit(path):
    """The attack section of an FGSM run at eps 0 (its rows and where the model came from)."""
    subject = SubjectSpec(
        ModelSpec("mlp"), data=DataSpec.parse(f"tensors:{path}"), test_per_class=10, train=TrainConfig(epochs=5)
    )
    plan = Plan(
        "attack", [Check("attack", None, AttackSettings(eps=[0.0], method="fgsm", sanity=False))], subject, device="cpu"
    )
    return run_plan(plan, run_id="r", environment={}).report.results["attack"]


def test_a_rewritten_tensors_file_with_new_labels_trains_a_fresh_model(tmp_path, monkeypatch):
    path = tmp_path / "d.pt"
    group = torch.arange(90) % 3
    images = write_tensors(path, group) * 0.5
    images[torch.arange(90), 0, group] = 1.0  # a learnable rule: the bright row is the group
    torch.save({"images": images, "labels": (group + 1) % 3}, path)
    monkeypatch.setenv("AUDITNN_CACHE_DIR", str(tmp_path / "cache"))
    first = _fgsm_audit(path)
    assert first["model"] == "trained"
    assert _fgsm_audit(path)["model"] == "cache"
    torch.save({"images": images, "labels": group}, path)  # same images, same N, every label changed
    second = _fgsm_audit(path)
    assert second["model"] == "trained"
    monkeypatch.setenv("AUDITNN_CACHE_DIR", str(tmp_path / "fresh"))
    fresh = _fgsm_audit(path)
    assert second["rows"][0]["clean_accuracy"] == fresh["rows"][0]["clean_accuracy"]
    assert fresh["rows"][0]["clean_accuracy"] > 0.5  # learnt; the stale model scores ~0 (labels rotated)
    assert first["data"]["train_sha256"] != second["data"]["train_sha256"]
    data = load_eval_data(data=f"tensors:{path}", test_per_class=10, trains_model=True)
    digest = hashlib.sha256(str(list(data.train_images.shape)).encode())
    digest.update(data.train_images.numpy().tobytes())
    digest.update(data.train_labels.numpy().tobytes())
    assert second["data"]["train_sha256"] == digest.hexdigest()


def test_attacking_random_labels_with_a_trained_architecture_scores_chance(capsys, tmp_path):
    """300 images, 3 classes, random labels: a model scored on the images it memorised would reach 1.0."""
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.rand(300, 1, 8, 8, generator=gen), torch.randint(0, 3, (300,), generator=gen)
    torch.save({"images": images, "labels": labels}, tmp_path / "random.pt")
    code, _, err = run_cli(
        capsys,
        "attack",
        "--method",
        "fgsm",
        "--model",
        "mlp",
        "--data",
        f"tensors:{tmp_path / 'random.pt'}",
        "--epochs",
        "20",
        "--eps",
        "0,1/255",
        "--no-sanity",
        "--device",
        "cpu",
        "-q",
        "--out",
        tmp_path / "out",
    )
    assert code == 0, err
    section = json.loads((tmp_path / "out" / "report.json").read_text())["results"]["attack"]
    assert section["data"]["n_test"] == 90 and section["data"]["n_train"] == 210
    assert section["rows"][0]["clean_accuracy"] < 0.5


def test_a_digits_asset_that_does_not_match_its_digest_exits_2_naming_the_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DIGITS_SHA256", "0" * 64)
    sources._digits_bytes.cache_clear()
    try:
        code, _, err = run_cli(
            capsys, "attack", "--method", "fgsm", "--epochs", "1", "--device", "cpu", "--out", tmp_path / "out"
        )
    finally:
        sources._digits_bytes.cache_clear()
    assert_usage_error(code, err, "digits.csv.gz", "sha256")
    assert files_under(tmp_path / "out") == []


def test_the_digits_asset_is_read_and_checked_once_per_process(monkeypatch):
    sources._digits_bytes.cache_clear()
    sources.load_digits()
    monkeypatch.setattr(sources, "DIGITS_SHA256", "0" * 64)  # a second load does not read the asset again
    assert len(sources.load_digits()) == 1797
    assert sources._digits_bytes.cache_info().hits >= 1
