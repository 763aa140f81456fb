"""The deformable field shrunk toward its rigid part: ``d' = r + w (d - r)`` (``[shrink]``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from remind2reg.inference.affine.rigid_search import rigid_about
from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.core.fields import affine_field
from remind2reg.inference.core.projection import shrink_toward_rigid
from remind2reg.inference.settings import SettingsError, ShrinkSettings

SHAPE = (40, 36, 32)
# Anisotropic working voxels (1.0 x 1.2 x 0.8 mm), oblique: a map rigid in mm is not rigid in
# voxels, so a fit in voxels would be wrong here.
ANGLE = np.deg2rad(20.0)
W = np.array(
    [
        [1.0 * np.cos(ANGLE), -1.2 * np.sin(ANGLE), 0.0, -10.0],
        [1.0 * np.sin(ANGLE), 1.2 * np.cos(ANGLE), 0.0, 5.0],
        [0.0, 0.0, 0.8, 2.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _rigid_field() -> tuple[torch.Tensor, np.ndarray]:
    """A rigid map in world mm (fixed -> moving) and its field in working voxels."""
    world = rigid_about(
        torch.tensor([0.06, -0.05, 0.09]), torch.tensor([2.0, -1.5, 3.0]), torch.tensor([0.0, 20.0, 14.0])
    ).numpy()
    vox2vox = np.linalg.inv(W) @ world @ W  # working voxels: x -> W^-1 M W x
    return affine_field(vox2vox, SHAPE), vox2vox


def _bulge() -> torch.Tensor:
    """A smooth non-rigid bump on under a third of the grid (voxels)."""
    i = torch.arange(SHAPE[0], dtype=torch.float32).view(-1, 1, 1)
    bump = torch.exp(-(((i - 6.0) / 4.0) ** 2)).expand(SHAPE)
    out = torch.zeros(1, 3, *SHAPE)
    out[0, 1] = 4.0 * bump
    return out


def test_a_rigid_field_is_its_own_rigid_part_in_mm_on_anisotropic_voxels():
    rigid, _ = _rigid_field()
    mask = torch.ones(1, 1, *SHAPE)
    for weight in (0.0, 0.3):
        out = shrink_toward_rigid(rigid, mask, W, weight)
        assert float((out - rigid).abs().max()) < 2e-3, weight


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_the_non_rigid_part_is_scaled_by_the_weight(weight):
    """rigid + bulge -> rigid + weight * bulge: LTS trims the bulge from the rigid fit."""
    rigid, _ = _rigid_field()
    bulge = _bulge()
    out = shrink_toward_rigid(rigid + bulge, torch.ones(1, 1, *SHAPE), W, weight)
    expected = rigid + weight * bulge
    assert float((out - expected).abs().max()) < 0.02
    assert float((rigid + bulge - expected).abs().max()) > 1.0  # the test is not trivial at weight < 1


def test_weight_one_returns_the_field_itself_and_only_masked_voxels_are_fitted():
    rigid, _ = _rigid_field()
    field = rigid + _bulge()
    assert shrink_toward_rigid(field, torch.ones(1, 1, *SHAPE), W, 1.0) is field
    # outside the mask anything goes: a huge displacement there must not move the fit
    mask = torch.ones(1, 1, *SHAPE)
    mask[..., SHAPE[0] // 2 :, :, :] = 0
    wild = rigid.clone()
    wild[:, :, SHAPE[0] // 2 :] += 50.0
    out = shrink_toward_rigid(wild, mask, W, 0.0)
    assert float((out - rigid).abs().max()) < 2e-3


def test_the_weight_is_validated_where_it_is_read():
    with pytest.raises(ValueError, match="residual_weight"):
        shrink_toward_rigid(torch.zeros(1, 3, *SHAPE), torch.ones(1, 1, *SHAPE), W, 1.5)
    with pytest.raises(SettingsError, match="residual_weight"):
        ShrinkSettings(residual_weight=-0.1)
    with pytest.raises(SettingsError, match=r"config\.shrink"):
        RegistrationConfig.from_dict({"shrink": {"residual_weight": 2.0}})
    assert RegistrationConfig.from_dict({"shrink": {"residual_weight": 0.5}}).shrink.residual_weight == 0.5
