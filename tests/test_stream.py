"""Issue 12: images are read batch by batch (streaming changes memory, not results), adversarial images are not kept
beyond their batch unless saved, and every figure of a streamed evaluation is recomputed here a second way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import assert_usage_error, files_under, run_cli
from PIL import Image

from auditnn.attacks.evaluate import AttackSpec, evaluate_attack
from auditnn.checks.clean import clean_accuracy
from auditnn.data.sources import load_imagefolder, load_source
from auditnn.data.stream import FolderStore, TensorStore
from auditnn.errors import AuditError
from auditnn.subject import data_digest


def write_folder(root: Path, n: int = 24, size: int = 10, seed: int = 0, mode: str = "RGB") -> torch.Tensor:
    """n PNG images in two class folders (even index: class a, odd: b), named so that sorted order is index order
    within a class; returns the uint8 pixels (n, C, H, W) in the order load_imagefolder reads them (a's, then b's)."""
    gen = np.random.default_rng(seed)
    kept = {0: [], 1: []}
    for i in range(n):
        label = i % 2
        array = gen.integers(0, 256, (size, size, 3) if mode == "RGB" else (size, size), dtype=np.uint8)
        folder = root / "ab"[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array, mode).save(folder / f"{i:04d}.png")
        kept[label].append(torch.from_numpy(array))
    pixels = torch.stack(kept[0] + kept[1])
    return pixels.permute(0, 3, 1, 2).contiguous() if mode == "RGB" else pixels.unsqueeze(1)


def tiny_model(channels: int = 3, size: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * (size - 2) ** 2, 2)).eval()


def test_a_folder_is_read_per_batch_with_the_pixels_a_plain_pil_decode_gives(tmp_path):
    pixels = write_folder(tmp_path)
    images, skipped = load_imagefolder(tmp_path)
    assert isinstance(images.store, FolderStore) and skipped == 0
    expected = pixels.float() / 255
    for workers in (0, 1):
        batches = list(images.store.batches(5, workers=workers))
        assert [(b, e) for b, e, _ in batches] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 24)]
        assert torch.equal(torch.cat([x for _, _, x in batches]), expected)
    assert torch.equal(images.store.read(torch.tensor([3, 0])), expected[[3, 0]])
    assert torch.equal(images.store.subset(torch.tensor([7, 2])).read(torch.arange(2)), expected[[7, 2]])
    assert images.labels.tolist() == [0] * 12 + [1] * 12


def test_uint8_sources_stay_uint8_and_read_as_the_float_they_always_gave(tmp_path):
    pixels = torch.randint(0, 256, (6, 1, 5, 5), dtype=torch.uint8)
    torch.save({"images": pixels, "labels": torch.tensor([0, 1, 0, 1, 0, 1])}, tmp_path / "t.pt")
    images = load_source(f"tensors:{tmp_path / 't.pt'}").train
    assert isinstance(images.store, TensorStore) and images.store.pixels.dtype == torch.uint8
    assert torch.equal(images.images, pixels.float().div(255))
    # the digest of a store read batch by batch is the digest of the whole tensor
    assert data_digest(images.store, images.labels) == data_digest(pixels.float().div(255), images.labels)


def test_an_image_that_breaks_mid_stream_is_named_in_one_line(tmp_path):
    write_folder(tmp_path, n=12)
    broken = tmp_path / "b" / "0005.png"
    broken.write_bytes(broken.read_bytes()[:60])  # the header survives, the pixels do not
    images, _ = load_imagefolder(tmp_path)  # headers only: accepted
    for workers in (0, 1):
        with pytest.raises(AuditError) as caught:
            list(images.store.batches(4, workers=workers))
        message = str(caught.value)
        assert "0005.png" in message and "cannot be decoded" in message and "\n" not in message


def evaluation_figures(evaluation):
    return (
        [
            (r.robust_accuracy, r.success_rate, r.mean_perturbation, r.max_perturbation, r.robust_accuracy_per_attack)
            for r in evaluation.rows
        ],
        evaluation.checks,
        [w["code"] for w in evaluation.warnings],
    )


def test_streaming_changes_memory_not_results(tmp_path):
    """The same evaluation from a float tensor, from uint8 pixels in memory, and from the PNG files decoded in a
    worker process: the same figures, bit for bit (the pixels are the same floats, the batches the same)."""
    pixels = write_folder(tmp_path, n=40)
    labels = torch.tensor([0] * 20 + [1] * 20)
    model = tiny_model()
    spec = AttackSpec(eps=[0.0, 0.02, 0.05], steps=3, batch_size=16)
    from_tensor = evaluate_attack(model, pixels.float() / 255, labels, spec)
    from_uint8 = evaluate_attack(model, TensorStore(pixels), labels, spec)
    from_files = evaluate_attack(model, load_imagefolder(tmp_path)[0].store, labels, spec, workers=1)
    assert evaluation_figures(from_tensor) == evaluation_figures(from_uint8) == evaluation_figures(from_files)
    for key in ("clean", "adversarial", "labels", "predictions"):
        assert torch.equal(from_tensor.examples[key], from_files.examples[key])
    assert len(from_files.examples["clean"]) == 8
    assert torch.equal(from_files.examples["clean"], pixels[:8].float() / 255)


def test_saved_adversarial_images_give_the_reported_figures_again(tmp_path):
    """Every image written by --save-adversarial, scored again with a plain forward pass: the robust accuracy of each
    eps, the predictions, and the ball they must lie in."""
    torch.manual_seed(1)
    x, y = torch.rand(37, 3, 10, 10), torch.randint(0, 2, (37,))
    model = tiny_model()
    spec = AttackSpec(eps=[0.0, 0.03, 0.1], steps=4, batch_size=8)
    folder = tmp_path / "adv"
    folder.mkdir()
    evaluation = evaluate_attack(model, x, y, spec, save_adversarial=folder)
    index = json.loads((folder / "adversarial.json").read_text())
    assert index["files"] == [f"batch-{i:06d}.pt" for i in range(5)] and index["n_images"] == 37
    saved = [torch.load(folder / name, weights_only=True) for name in index["files"]]
    assert torch.equal(torch.cat([s["index"] for s in saved]), torch.arange(37))
    adversarial = torch.cat([s["adversarial"] for s in saved], dim=1)  # (E, N, C, H, W)
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
        for e, eps in enumerate(sorted(spec.eps)):
            predicted = model(adversarial[e]).argmax(1)
            assert torch.equal(predicted, torch.cat([s["prediction"][e] for s in saved]))
            robust = clean_ok & (predicted == y)
            assert torch.equal(robust, torch.cat([s["robust"][e] for s in saved]))
            assert float(robust.float().mean()) == pytest.approx(evaluation.rows[e].robust_accuracy, abs=1e-7)
            assert (adversarial[e] - x).abs().amax() <= eps + 1e-6
            assert adversarial[e].min() >= 0 and adversarial[e].max() <= 1


def test_clean_accuracy_streamed_matches_a_plain_loop(tmp_path):
    pixels = write_folder(tmp_path, n=30)
    store = load_imagefolder(tmp_path)[0].store
    labels = torch.tensor([0] * 15 + [1] * 15)
    model = tiny_model()
    with torch.no_grad():
        plain = (model(pixels.float() / 255).argmax(1) == labels).float().mean()
    for batch in (1, 7, 64):
        assert clean_accuracy(model, store, labels, batch_size=batch, workers=1) == float(plain)


# ---------------------------------------------------------------- the attack command on an image folder


@pytest.fixture
def folder_and_model(tmp_path):
    write_folder(tmp_path / "imgs", n=20)
    path = tmp_path / "model.pt"
    torch.jit.trace(tiny_model(), torch.rand(1, 3, 10, 10)).save(str(path))
    return tmp_path / "imgs", path


def attack_args(folder: Path, model: Path, *more: str) -> list[str]:
    return ["attack", "--model", f"torchscript:{model}", "--data", f"imagefolder:{folder}", "--device", "cpu",
            "--eps", "0,0.03", "--steps", "2", "--quiet", *more]  # fmt: skip


def test_the_attack_command_streams_a_folder_and_records_the_batch(tmp_path, capsys, monkeypatch, folder_and_model):
    folder, model = folder_and_model

    def refuse(self):  # noqa: ANN001, ANN202
        raise AssertionError("an image folder was decoded all at once")

    monkeypatch.setattr(FolderStore, "materialize", refuse)
    code, out, err = run_cli(capsys, *attack_args(folder, model, "--out", str(tmp_path / "out"), "--batch-size", "8"))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["results"]["attack"]["batch"] == {"size": 8, "chosen_by": "given"}
    code, out, err = run_cli(capsys, *attack_args(folder, model, "--out", str(tmp_path / "auto")))
    assert code == 0, err
    batch = json.loads((tmp_path / "auto" / "report.json").read_text())["results"]["attack"]["batch"]
    assert batch["size"] == 512 and batch["chosen_by"] == "upper" and batch["per_image_bytes"] > 0


def test_save_adversarial_writes_batches_the_report_agrees_with(tmp_path, capsys, folder_and_model):
    folder, model = folder_and_model
    saved = tmp_path / "adv"
    args = attack_args(folder, model, "--out", str(tmp_path / "out"), "--batch-size", "8", "--save-adversarial")
    code, _, err = run_cli(capsys, *args, str(saved))
    assert code == 0, err
    index = json.loads((saved / "adversarial.json").read_text())
    assert index["files"] == ["batch-000000.pt", "batch-000001.pt", "batch-000002.pt"]
    robust = torch.cat([torch.load(saved / f, weights_only=True)["robust"][1] for f in index["files"]])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    row = next(r for r in report["results"]["attack"]["rows"] if r["eps"] == 0.03)
    assert row["robust_accuracy"] == pytest.approx(float(robust.float().mean()), abs=1e-7)
    assert report["results"]["attack"]["adversarial_folder"] == str(saved)


@pytest.mark.parametrize(
    ("more", "needles"),
    [
        (["--max-memory", "4 apples"], ["--max-memory '4 apples'", "allowed:"]),
        (["--max-memory", "12"], ["--max-memory '12'", "allowed:"]),
        (["--max-memory", "1kB"], ["--max-memory 1 kB is too small", "allowed: at least"]),
        (["--save-adversarial", "FILE"], ["--save-adversarial", "is a file", "allowed: a new or empty folder"]),
        (["--save-adversarial", "FULL"], ["--save-adversarial", "is not empty", "allowed: a new or empty folder"]),
    ],
)
def test_bad_memory_and_save_options_exit_2_in_one_line(tmp_path, capsys, folder_and_model, more, needles):
    folder, model = folder_and_model
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "old.pt").write_text("x")
    more = [str(tmp_path / m) if m in ("FILE", "FULL") else m for m in more]
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, *attack_args(folder, model, "--out", str(out), *more))
    assert_usage_error(code, err, *needles)
    assert not out.exists() and (tmp_path / "FULL" / "old.pt").read_text() == "x"


def test_a_corrupt_image_found_mid_stream_exits_2_naming_it_and_leaves_nothing(tmp_path, capsys, folder_and_model):
    folder, model = folder_and_model
    broken = folder / "b" / "0009.png"
    broken.write_bytes(broken.read_bytes()[:60])
    out, saved = tmp_path / "out", tmp_path / "adv"
    args = attack_args(folder, model, "--out", str(out), "--batch-size", "4", "--save-adversarial", str(saved))
    code, _, err = run_cli(capsys, *args)
    assert_usage_error(code, err, "0009.png", "cannot be decoded")
    assert files_under(out) == [] and files_under(saved) == []


def test_an_audit_files_max_memory_is_read_and_checked(tmp_path, capsys):
    (tmp_path / "a.toml").write_text('[run]\nmax_memory = "lots"\n[[check]]\nkind = "clean"\nmin_accuracy = 0.5\n')
    code, _, err = run_cli(capsys, "audit", str(tmp_path / "a.toml"), "--out", str(tmp_path / "out"))
    assert_usage_error(code, err, "run.max_memory", "'lots'", "allowed:")


@pytest.mark.parametrize("inside", ["same", "inside"])
def test_save_adversarial_overlapping_the_report_folder_is_refused_before_any_work(
    tmp_path, capsys, folder_and_model, inside
):
    folder, model = folder_and_model
    out = tmp_path / "out"
    save = out if inside == "same" else out / "adv"
    code, _, err = run_cli(capsys, *attack_args(folder, model, "--out", str(out), "--save-adversarial", str(save)))
    assert_usage_error(code, err, "--save-adversarial", "overlap", "allowed: two separate folders")
    assert not out.exists()


def test_an_image_whose_decoder_raises_anything_is_named_in_one_line(tmp_path, monkeypatch):
    """PIL's PNG decoder raises SyntaxError on some damaged files (the review's byte flips): exit 2 naming the file,
    not an internal error."""
    from PIL import Image

    write_folder(tmp_path, n=4)
    images, _ = load_imagefolder(tmp_path)

    def broken(self):  # noqa: ANN001, ANN202
        raise SyntaxError("broken PNG file")

    monkeypatch.setattr(Image.Image, "load", broken)
    with pytest.raises(AuditError) as caught:
        list(images.store.batches(2, workers=0))
    assert "0000.png" in str(caught.value) and "SyntaxError: broken PNG file" in str(caught.value)


def test_an_audit_files_budget_too_small_is_named_by_its_key(tmp_path, capsys, folder_and_model):
    folder, model = folder_and_model
    (tmp_path / "a.toml").write_text(
        f'[model]\nsource = "torchscript:{model}"\n[data]\nsource = "imagefolder:{folder}"\n'
        '[run]\ndevice = "cpu"\nmax_memory = "1kB"\n[[check]]\nkind = "clean"\nmin_accuracy = 0.1\n'
    )
    code, _, err = run_cli(capsys, "audit", str(tmp_path / "a.toml"), "--out", str(tmp_path / "out"))
    assert_usage_error(code, err, "key 'run.max_memory' 1 kB is too small", "allowed: at least")
