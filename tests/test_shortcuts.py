import pytest
import torch

from auditnn.data.shortcuts import POSITIONS, SHORTCUTS, make_shortcut
from auditnn.errors import AuditError


def _noise(n=12, c=1, size=28, seed=0):
    # Random pixel values: no planted colour coincides with the pixel it replaces, so "changed" is well defined.
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 0.98 + 0.01


@pytest.mark.parametrize("tag", sorted(SHORTCUTS))
@pytest.mark.parametrize("channels", [1, 3])
def test_mask_covers_exactly_the_pixels_the_shortcut_changed(tag, channels):
    images = _noise(c=channels)
    ids = torch.tensor([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0])
    shortcut = make_shortcut(tag, 10)
    planted, mask = shortcut.plant(images, ids)
    before = images.expand_as(planted)
    changed = (planted != before).any(dim=1, keepdim=True)
    assert mask.dtype == torch.bool and mask.shape == (12, 1, 28, 28)
    assert torch.equal(changed, mask)
    assert not mask[0].any()  # id -1 plants nothing
    assert 0.0 <= planted.min() and planted.max() <= 1.0


@pytest.mark.parametrize("position", POSITIONS)
def test_watermark_positions_and_random_placement_are_seeded(position):
    shortcut = make_shortcut("watermark", 10, position=position)
    ids = torch.arange(10)
    a = shortcut.plant(_noise(10), ids, generator=torch.Generator().manual_seed(1))
    b = shortcut.plant(_noise(10), ids, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    rows, cols = a[1][:, 0].any(2), a[1][:, 0].any(1)
    if position == "top-left":
        assert rows[:, :8].any(1).all() and cols[:, :8].any(1).all()
    if position == "bottom-right":
        assert rows[:, -8:].any(1).all() and cols[:, -8:].any(1).all()


def _boxes(mask):
    """(top, left, bottom, right) of each image's mask, bottom/right exclusive: (N, 4)."""
    rows, cols = mask[:, 0].any(2).float(), mask[:, 0].any(1).float()
    top, left = rows.argmax(1), cols.argmax(1)  # argmax returns the first hit
    bottom, right = rows.shape[1] - rows.flip(1).argmax(1), cols.shape[1] - cols.flip(1).argmax(1)
    return torch.stack([top, left, bottom, right], 1)


# 20 rows x 30 columns, a 7-pixel stamp, a 1-pixel margin: each corner's box by hand (rows and columns differ).
CORNERS = {
    "top-left": [1, 1, 8, 8],
    "top-right": [1, 22, 8, 29],
    "bottom-left": [12, 1, 19, 8],
    "bottom-right": [12, 22, 19, 29],
}


@pytest.mark.parametrize("position", sorted(CORNERS))
def test_the_stamp_lands_in_the_corner_asked(position):
    _, mask = make_shortcut("watermark", 10, position=position).plant(torch.zeros(10, 1, 20, 30), torch.arange(10))
    assert _boxes(mask).tolist() == [CORNERS[position]] * 10


def test_random_placement_spreads_stamps_over_the_whole_image():
    _, mask = make_shortcut("watermark", 10, position="random").plant(
        torch.zeros(400, 1, 20, 30), torch.arange(400) % 10, generator=torch.Generator().manual_seed(0)
    )
    boxes = _boxes(mask)
    assert ((boxes[:, 2] - boxes[:, 0]) == 7).all() and ((boxes[:, 3] - boxes[:, 1]) == 7).all()
    tops, lefts = boxes[:, 0], boxes[:, 1]
    assert tops.min() == 0 and tops.max() == 20 - 7  # every row offset is possible, up to the bottom edge
    assert lefts.min() == 0 and lefts.max() == 30 - 7  # columns reach further than rows could
    assert len(set(zip(tops.tolist(), lefts.tolist(), strict=True))) > 200  # not a few fixed places


def test_each_class_gets_a_distinct_stamp():
    images = torch.zeros(10, 1, 28, 28)
    planted, _ = make_shortcut("watermark", 10).plant(images, torch.arange(10))
    boats, _ = make_shortcut("boat", 10).plant(images, torch.arange(10))
    for stack in (planted, boats):
        flat = stack.flatten(1)
        assert len({tuple(row.tolist()) for row in flat}) == 10


def test_background_turns_grayscale_into_rgb_and_keeps_the_digit():
    images = torch.zeros(2, 1, 28, 28)
    images[:, :, 10:18, 10:18] = 1.0
    planted, mask = make_shortcut("background", 10).plant(images, torch.tensor([0, -1]))
    assert planted.shape == (2, 3, 28, 28)
    assert torch.equal(planted[:, :, 12, 12], torch.ones(2, 3))  # the foreground is untouched
    assert mask[0, 0, 0, 0] and not mask[0, 0, 12, 12] and not mask[1].any()
    assert torch.equal(planted[1], images[1].expand(3, 28, 28))  # id -1: the same picture, now in RGB


def test_bad_salience_settings_name_the_value_and_what_is_allowed():
    with pytest.raises(AuditError, match="tag 'logo' is unknown; allowed: watermark, boat or background"):
        make_shortcut("logo", 10)
    with pytest.raises(AuditError, match="position 'middle'"):
        make_shortcut("watermark", 10, position="middle")
    with pytest.raises(AuditError, match="opacity 1.5"):
        make_shortcut("boat", 10, opacity=1.5)
    with pytest.raises(AuditError, match="no setting size"):
        make_shortcut("background", 10, size=5)
    with pytest.raises(AuditError, match="K = 1"):
        make_shortcut("watermark", 1)
    with pytest.raises(AuditError, match="size 40 does not fit 28x28"):
        make_shortcut("watermark", 10, size=40).plant(_noise(1), torch.tensor([0]))
