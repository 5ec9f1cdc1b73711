import pytest
import torch

from auditnn.attacks.patch import PatchConfig, apply_patch, optimize_patch, patch_mask
from auditnn.errors import AuditError


def test_a_placed_patch_covers_its_own_area_inside_the_frame():
    images = torch.zeros(16, 3, 32, 32)
    patch = torch.ones(3, 8, 8)
    out, coverage = apply_patch(images, patch, patch_mask(8, "square"), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(coverage.flatten(1).sum(1), torch.full((16,), 64.0), atol=1e-3)
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.full((16,), 3 * 64.0), atol=1e-3)
    assert len({tuple(c.nonzero()[0].tolist()) for c in coverage}) > 1  # random places


def test_circle_mask_has_the_area_of_a_disc():
    assert abs(patch_mask(64, "circle").sum().item() - 3.14159 * 32**2) < 40


def test_the_optimized_patch_beats_its_noise_control(digits_model):  # noqa: F811
    model, x, y = digits_model
    config = PatchConfig(size=0.5, target=4, steps=200, batch_size=32, seed=0)
    result = optimize_patch(model, x, y, x, y, config)
    assert 0 <= result.patch.min() and result.patch.max() <= 1 and result.patch.shape == (1, 14, 14)
    assert result.target_success_rate > result.noise_target_success_rate + 0.3
    assert result.accuracy_with_patch < result.accuracy_with_noise_patch


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(size=0.0), "patch size 0 is outside (0, 1)"),
        (dict(size=1.2), "patch size 1.2"),
        (dict(shape="star"), "patch shape 'star'"),
        (dict(steps=0), "steps 0"),
    ],
)
def test_bad_patch_settings_name_the_value(kwargs, needle):
    with pytest.raises(AuditError) as info:
        PatchConfig(**kwargs).validate(10)
    assert needle in str(info.value)
