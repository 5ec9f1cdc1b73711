"""Issue 12 for the shortcut checks on the user's images: planted-tag sensitivity and per-group accuracy read the
images batch by batch and give the numbers they gave when every image was planted and predicted at once."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from auditnn.data import shortcuts
from auditnn.data.shortcuts import make_shortcut
from auditnn.errors import InvariantError
from auditnn.shortcut.annotated import TagSensitivity, tag_sensitivity

CLASSES = ["a", "b", "c"]


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
