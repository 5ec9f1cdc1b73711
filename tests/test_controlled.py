import json
from pathlib import Path

import pytest
import torch

from auditnn.data.controlled import (
    BuildConfig,
    ShortcutConfig,
    assign_shortcut_ids,
    build_controlled,
    load_controlled,
    save_controlled,
)
from auditnn.errors import AuditError


def test_rho_is_the_share_of_ids_that_agree_and_the_rest_are_uniform():
    labels = torch.arange(100000) % 10
    ids = assign_shortcut_ids(labels, 10, 0.8, torch.Generator().manual_seed(0))
    agree = ids == labels
    assert abs(agree.float().mean().item() - 0.8) < 0.01
    others = torch.bincount((ids[~agree] - labels[~agree]) % 10, minlength=10)
    assert others[0] == 0 and (others[1:].float() / others[1:].sum() - 1 / 9).abs().max() < 0.01


def test_balanced_test_split_has_equal_group_counts(digits_base):
    data = build_controlled(BuildConfig(test_per_class=7, rho=0.9), digits_base)
    groups = torch.bincount(data.test.labels * 10 + data.test.shortcut_ids, minlength=100)
    assert groups.tolist() == [7] * 100
    assert len(data.test_clean) == 70 and (data.test_clean.shortcut_ids == -1).all()
    assert not data.test_clean.masks.any()
    # the clean split holds the same base images as every variant block of the balanced split
    assert torch.equal(data.test.source_index.view(10, 70)[3], data.test_clean.source_index)
    assert abs((data.train.shortcut_ids == data.train.labels).float().mean().item() - 0.9) < 0.03


def test_target_class_variant_tags_only_that_class(digits_base):
    data = build_controlled(
        BuildConfig(rho=0.9, test_per_class=5, shortcut=ShortcutConfig(target_class=7)), digits_base
    )
    assert set(data.train.shortcut_ids.unique().tolist()) <= {-1, 7}
    tagged = data.train.shortcut_ids == 7
    # aligned = tagged exactly when in class 7, for a share rho of the images: ~90 % of 7s tagged, ~10 % of the rest
    assert abs(tagged[data.train.labels == 7].float().mean() - 0.9) < 0.06
    assert abs(tagged[data.train.labels != 7].float().mean() - 0.1) < 0.02
    assert (
        torch.bincount((data.test.labels * 2 + (data.test.shortcut_ids == 7).long()), minlength=20).tolist() == [5] * 20
    )


@pytest.mark.parametrize("target_class", [None, 3])
@pytest.mark.parametrize("rho", [0.95, 0.3])
def test_the_share_of_aligned_training_images_is_rho_in_both_modes(digits_base, target_class, rho):
    config = BuildConfig(rho=rho, test_per_class=5, shortcut=ShortcutConfig(target_class=target_class))
    data = build_controlled(config, digits_base)
    for name in ("train", "val"):
        split = getattr(data, name)
        aligned = 0
        for label, shortcut_id in zip(split.labels.tolist(), split.shortcut_ids.tolist(), strict=True):
            if target_class is None:
                aligned += shortcut_id == label
            else:  # aligned: tagged and of the target class, or untagged and of another
                aligned += (shortcut_id == target_class) == (label == target_class)
        assert aligned == int(rho * len(split) + 0.5), name  # exactly rho * N rounded half up, not rho on average
        assert data.manifest["aligned_share"][name] == pytest.approx(aligned / len(split))


def test_the_aligned_count_is_rho_n_rounded_half_up_as_the_readme_says():
    """N = 150, rho = 0.95: rho x N = 142.5 exactly (in binary too); half up gives 143, Python's round 142."""
    ids = assign_shortcut_ids(torch.arange(150) % 10, 10, 0.95, torch.Generator().manual_seed(0))
    assert int((ids == torch.arange(150) % 10).sum()) == 143 != round(0.95 * 150)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "rho x N rounded half up" in readme and "round(rho x N)" not in readme


def test_same_seed_same_bytes_and_checksums_are_verified(tmp_path, digits_base):
    config = BuildConfig(test_per_class=3, shortcut=ShortcutConfig(tag="boat", position="random"))
    a = save_controlled(build_controlled(config, digits_base), tmp_path / "a")
    b = save_controlled(build_controlled(config, digits_base), tmp_path / "b")
    manifest_a = json.loads((a / "manifest.json").read_text())
    assert manifest_a["checksums"] == json.loads((b / "manifest.json").read_text())["checksums"]
    loaded = load_controlled(a)
    assert loaded.tag == "boat" and len(loaded.test) == 300
    (a / "train.pt").write_bytes((a / "train.pt").read_bytes()[:-10])
    with pytest.raises(AuditError, match="does not match its checksum"):
        load_controlled(a)


def test_a_manifest_that_is_not_an_object_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]\n")
    with pytest.raises(AuditError, match="dataset manifest '.*manifest.json' holds a list; allowed: a JSON object"):
        load_controlled(tmp_path)


@pytest.mark.parametrize("rho", [-0.1, 1.5])
def test_rho_outside_the_unit_interval_is_refused(rho):
    with pytest.raises(AuditError, match=f"rho {rho} is outside \\[0, 1\\]"):
        BuildConfig(rho=rho).validate()


def test_target_class_out_of_range_is_refused(digits_base):
    with pytest.raises(AuditError, match="target class 10 is out of range; allowed: 0 .. 9"):
        build_controlled(BuildConfig(shortcut=ShortcutConfig(target_class=10)), digits_base)
