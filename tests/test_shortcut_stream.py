"""Issue 12 for the shortcut checks on the user's images: planted-tag sensitivity and per-group accuracy read the
images batch by batch and give the numbers they gave when every image was planted and predicted at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import run_cli
from PIL import Image

from auditnn import memory
from auditnn.data import shortcuts
from auditnn.data.shortcuts import make_shortcut
from auditnn.data.sources import load_imagefolder
from auditnn.data.stream import FolderStore, TensorStore
from auditnn.errors import InvariantError
from auditnn.inference import predictions
from auditnn.shortcut.annotated import TagSensitivity, tag_sensitivity

CLASSES = ["a", "b", "c"]


def write_folder(root: Path, n: int, size: int = 10) -> torch.Tensor:
    """n random RGB PNG images, the first half in class folder 'a', the rest in 'b' (named in index order);
    returns their uint8 pixels (n, 3, size, size) in the order load_imagefolder reads them."""
    generator = torch.Generator().manual_seed(2)
    pixels = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    for i in range(n):
        folder = root / ("a" if i < n // 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i].permute(1, 2, 0).numpy(), "RGB").save(folder / f"{i:03d}.png")
    return pixels


def tiny_model(channels: int = 3, size: int = 12, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * (size - 2) ** 2, classes)
    ).eval()


def whole_tensor_sensitivity(model, images, labels, shortcut, classes, *, target_class=None, seed=0) -> TagSensitivity:
    """Planted-tag sensitivity as auditnn computed it before issue 12: every image planted at once (one draw of the
    tag's random placement for all N), one plain forward pass each for the untagged images and every variant."""

    def predicted(ids: torch.Tensor) -> torch.Tensor:
        planted, _ = shortcut.plant(images, ids, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return model(planted).argmax(1)

    n = len(images)
    base = predicted(torch.full((n,), -1))
    variants = []
    for k in [target_class] if target_class is not None else range(len(classes)):
        preds = predicted(torch.full((n,), k))
        flipped = preds != base
        moved_to = [int((preds[flipped] == c).sum()) for c in range(len(classes))]
        variants.append(
            {
                "tag_class": classes[k],
                "flip_rate": float(flipped.float().mean()),
                "toward_rate": float(((preds == k) & (base != k)).float().mean()),
                "accuracy_with_tag": float((preds == labels).float().mean()),
                "top_destination": classes[moved_to.index(max(moved_to))] if flipped.any() else "-",
            }
        )
    return TagSensitivity(
        tag=shortcut.name,
        n=n,
        accuracy_without_tag=float((base == labels).float().mean()),
        flip_rate=sum(v["flip_rate"] for v in variants) / len(variants),
        toward_rate=sum(v["toward_rate"] for v in variants) / len(variants),
        variants=variants,
    )


# (tag, look, image channels): random placements draw per image; the background draws a grain per pixel and turns
# gray images RGB (the model takes 3 channels).
CASES = [
    ("watermark", {"position": "random"}, 3),
    ("watermark", {}, 3),
    ("boat", {"position": "random", "size": 5}, 3),
    ("background", {}, 3),
    ("background", {"opacity": 0.6}, 1),
]


def case_images(channels: int, n: int = 23, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(n, channels, size, size, generator=generator)
    return images, torch.randint(0, 3, (n,), generator=generator)


@pytest.mark.parametrize(("tag", "look", "channels"), CASES)
def test_the_reference_is_what_tag_sensitivity_gives_on_a_tensor(tag, look, channels):
    images, labels = case_images(channels)
    shortcut = make_shortcut(tag, 3, **look)
    model = tiny_model()
    expected = whole_tensor_sensitivity(model, images, labels, shortcut, CLASSES, seed=3)
    assert tag_sensitivity(model, images, labels, shortcut, CLASSES, seed=3) == expected
    assert any(v["flip_rate"] > 0 for v in expected.variants)  # the tag matters to this model: a real comparison


@pytest.mark.parametrize(("tag", "look", "channels"), CASES)
@pytest.mark.parametrize("batch", [1, 4, 23, 1024])
def test_streamed_sensitivity_is_identical_for_every_batch_size(tag, look, channels, batch):
    """1 image a batch, 4 (which does not divide 23), all of them in one batch, and more than there are."""
    images, labels = case_images(channels)
    shortcut = make_shortcut(tag, 3, **look)
    model = tiny_model()
    expected = whole_tensor_sensitivity(model, images, labels, shortcut, CLASSES, seed=3)
    assert tag_sensitivity(model, images, labels, shortcut, CLASSES, seed=3, batch_size=batch) == expected
    one = whole_tensor_sensitivity(model, images, labels, shortcut, CLASSES, target_class=2, seed=3)
    assert tag_sensitivity(model, images, labels, shortcut, CLASSES, target_class=2, seed=3, batch_size=batch) == one


def test_streamed_sensitivity_from_uint8_pixels_and_from_files_equals_the_float_tensor(tmp_path):
    pixels = write_folder(tmp_path, n=14)
    labels = torch.tensor([0] * 7 + [1] * 7)
    model, shortcut = tiny_model(classes=2, size=10), make_shortcut("background", 2, opacity=0.8)
    expected = whole_tensor_sensitivity(model, pixels.float() / 255, labels, shortcut, ["a", "b"], seed=1)
    folder = load_imagefolder(tmp_path)[0].store
    assert isinstance(folder, FolderStore)
    for store, workers in ((TensorStore(pixels), None), (folder, 0), (folder, 1)):
        measured = tag_sensitivity(model, store, labels, shortcut, ["a", "b"], seed=1, batch_size=3, workers=workers)
        assert measured == expected


def test_streamed_predictions_are_a_plain_forward_pass():
    images, _ = case_images(3)
    model = tiny_model()
    with torch.no_grad():
        plain = model(images).argmax(1)
    for batch in (1, 5, 64):
        predicted = predictions(model, TensorStore(images), batch_size=batch)
        assert predicted.dtype == torch.long and torch.equal(predicted, plain)


@pytest.mark.parametrize(("tag", "look", "channels"), CASES)
@pytest.mark.parametrize("batch", [1, 4, 23])
def test_planting_batch_by_batch_with_one_drawer_gives_the_pixels_of_planting_all_at_once(tag, look, channels, batch):
    images, _ = case_images(channels)
    ids = torch.arange(23) % 4 - 1  # -1 (nothing), 0, 1, 2
    shortcut = make_shortcut(tag, 3, **look)
    whole, whole_mask = shortcut.plant(images, ids, generator=torch.Generator().manual_seed(9))
    drawer = shortcut.drawer(23, (12, 12), torch.Generator().manual_seed(9))
    parts = [
        shortcut.plant(images[s : s + batch], ids[s : s + batch], draws=drawer.take(s, min(23, s + batch)))
        for s in range(0, 23, batch)
    ]
    assert torch.equal(torch.cat([p for p, _ in parts]), whole)
    assert torch.equal(torch.cat([m for _, m in parts]), whole_mask)


@pytest.mark.parametrize(("tag", "look", "channels"), CASES)
def test_a_process_that_plants_later_batches_only_gets_their_draws(tag, look, channels, monkeypatch):
    """Under torchrun a process plants its own batches: the draws of the batches before them are skipped (here two
    images' worth at a time)."""
    monkeypatch.setattr(shortcuts, "_SKIP_CHUNK", 2 * 12 * 12 + 1)
    images, _ = case_images(channels)
    ids = torch.full((23,), 2)
    shortcut = make_shortcut(tag, 3, **look)
    whole, _ = shortcut.plant(images, ids, generator=torch.Generator().manual_seed(9))
    drawer = shortcut.drawer(23, (12, 12), torch.Generator().manual_seed(9))
    later, _ = shortcut.plant(images[17:21], ids[17:21], draws=drawer.take(17, 21))
    last, _ = shortcut.plant(images[21:], ids[21:], draws=drawer.take(21, 23))
    assert torch.equal(torch.cat([later, last]), whole[17:])


def test_per_pixel_draws_cannot_be_taken_twice_or_backwards():
    drawer = make_shortcut("background", 3).drawer(10, (4, 4), torch.Generator().manual_seed(0))
    assert drawer.take(2, 5)["pixels"].shape == (3, 1, 4, 4)
    with pytest.raises(InvariantError, match="draws of images 0:2 asked after those up to 5"):
        drawer.take(0, 2)
    with pytest.raises(InvariantError, match="draws of images 8:12 asked of a planting of 10"):
        drawer.take(8, 12)
    with pytest.raises(InvariantError, match=r"draws for \[2\] images given to plant 3"):
        make_shortcut("background", 3).plant(torch.rand(3, 1, 4, 4), torch.zeros(3).long(), draws=drawer.take(5, 7))


# ---------------------------------------------------------------- a case counted by hand, through the CLI


class CornerVote(nn.Module):
    """Class 0's logit is pixel (0, 0); class 1's is pixel (7, 7) + 0.25. On 8x8 images the watermark's 7-pixel box
    sits at rows and columns 1..7 (no margin fits), its frame covers (7, 7) and leaves (0, 0) alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, 0, 0], x[:, 0, 7, 7] + 0.25], dim=1)


# Per image as load_imagefolder orders them (class folder a, then b): pixel (0, 0) and the place column.
CORNER = [(255, "land"), (255, "land"), (230, "water"), (128, "water"), (0, "land"), (51, "water")]


@pytest.fixture
def corner_project(tmp_path):
    """Six black 8x8 gray images, pixel (0, 0) set as CORNER says; the first three in class a, the others in b.
    Without a tag the model answers a where (0, 0) > 0.25: a a a a b b (image 3 wrong). The watermark's frame turns
    (7, 7) to 0.7, so it answers a only where (0, 0) > 0.95: a a b b b b (image 2 wrong). Images 2 and 3 change."""
    rows = ["file,label,place"]
    for i, (value, place) in enumerate(CORNER):
        label = "a" if i < 3 else "b"
        array = torch.zeros(8, 8, dtype=torch.uint8)
        array[0, 0] = value
        (tmp_path / "images" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array.numpy(), "L").save(tmp_path / "images" / label / f"{i}.png")
        rows.append(f"{label}/{i}.png,{label},{place}")
    (tmp_path / "meta.csv").write_text("\n".join(rows) + "\n")
    torch.jit.trace(CornerVote(), torch.rand(2, 1, 8, 8)).save(str(tmp_path / "corner.pt"))
    return tmp_path


def test_the_hand_counted_case_streamed_from_a_folder_that_is_never_decoded_at_once(
    tmp_path, capsys, monkeypatch, corner_project
):
    """Both checks of `auditnn shortcut` on an image folder, in batches of 4 (4 + 2 images), with every figure
    counted by hand (corner_project). Nothing asks for every image at once: FolderStore.materialize refuses."""

    def refuse_in_checks(self):  # noqa: ANN001, ANN202
        raise AssertionError("an image folder was decoded all at once")

    monkeypatch.setattr(FolderStore, "materialize", refuse_in_checks)
    chosen = memory.choose_batch_size
    monkeypatch.setattr(memory, "choose_batch_size", lambda *a, **k: chosen(*a, **{**k, "upper": 4}))
    code, _, err = run_cli(
        capsys,
        "shortcut",
        "--model",
        f"torchscript:{corner_project / 'corner.pt'}",
        "--data",
        f"imagefolder:{corner_project / 'images'}",
        "--tag",
        "watermark",
        "--groups",
        str(corner_project / "meta.csv"),
        "--attribute",
        "place",
        "--associate",
        "land:a,water:b",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "report.json").read_text())["results"]
    sensitivity, groups = results["sensitivity"], results["groups"]
    for section in (sensitivity, groups):
        assert {k: section["batch"][k] for k in ("size", "chosen_by")} == {"size": 4, "chosen_by": "upper"}
    assert sensitivity["n"] == 6 and sensitivity["accuracy_without_tag"] == pytest.approx(5 / 6)
    # both variants' frames cover (7, 7): images 2 and 3 move to b; only b's tag moves them to its own class
    assert sensitivity["variants"] == [
        {"tag_class": c, "flip_rate": pytest.approx(2 / 6), "toward_rate": pytest.approx(t), "top_destination": "b",
         "accuracy_with_tag": pytest.approx(5 / 6)}
        for c, t in (("a", 0.0), ("b", 2 / 6))
    ]  # fmt: skip
    assert sensitivity["flip_rate"] == pytest.approx(2 / 6) and sensitivity["toward_rate"] == pytest.approx(1 / 6)
    # answers a a a a b b; labels a a a b b b; places land land water water land water
    assert {g["group"]: (g["n"], g["accuracy"]) for g in groups["groups"]} == {
        "a x land": (2, 1.0), "a x water": (1, 1.0), "b x land": (1, 1.0), "b x water": (2, 0.5)
    }  # fmt: skip
    assert groups["accuracy"] == pytest.approx(5 / 6) and groups["worst_group"] == "b x water"
    # aligned (label = the place's class): images 0, 1, 3, 5, of which 3 is wrong; conflicting: 2 and 4, both right
    assert groups["aligned_accuracy"] == pytest.approx(3 / 4) and groups["conflicting_accuracy"] == 1.0
    assert groups["gap"] == pytest.approx(-1 / 4) and groups["agreement_rate"] == 0.0


# ---------------------------------------------------------------- torchrun

# (case, batch size): 23 images in two batches of 16 for three processes (the third has none), or in six of 4 (two each:
# the later processes skip the background's grain of the batches before theirs).
TORCHRUN = ((CASES[0], 16), (CASES[4], 4), (CASES[4], 16))
WORKER = """
import json, sys
from dataclasses import asdict
sys.path.insert(0, sys.argv[2])
from auditnn.data.shortcuts import make_shortcut
from auditnn.runtime import finish_distributed, init_distributed, rank_and_world
from auditnn.inference import predictions
from auditnn.shortcut.annotated import tag_sensitivity
from test_shortcut_stream import CLASSES, TORCHRUN, case_images, tiny_model

init_distributed("cpu")
out = []
for (tag, look, channels), batch in TORCHRUN:
    images, labels = case_images(channels)
    model = tiny_model()
    measured = tag_sensitivity(model, images, labels, make_shortcut(tag, 3, **look), CLASSES, seed=3, batch_size=batch)
    out.append([asdict(measured), predictions(model, case_images(3)[0], batch_size=batch).tolist()])
if rank_and_world()[0] == 0:
    open(sys.argv[1], "w").write(json.dumps(out))
finish_distributed()
"""


def test_under_torchrun_each_process_plants_its_batches_and_the_numbers_are_one_processs(tmp_path):
    """Three processes (TORCHRUN): each plants and predicts its own batches; the gathered figures are those of
    planting and predicting every image at once."""
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tests = str(Path(__file__).parent)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
               str(tmp_path / "worker.py"), str(tmp_path / "out.json"), tests]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    gathered = json.loads((tmp_path / "out.json").read_text())
    for ((tag, look, channels), _), (measured, predicted) in zip(TORCHRUN, gathered, strict=True):
        images, labels = case_images(channels)
        model = tiny_model()
        expected = whole_tensor_sensitivity(model, images, labels, make_shortcut(tag, 3, **look), CLASSES, seed=3)
        assert measured == json.loads(json.dumps(expected.to_dict()))
        with torch.no_grad():
            assert predicted == model(case_images(3)[0]).argmax(1).tolist()
