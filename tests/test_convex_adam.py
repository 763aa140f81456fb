"""The convex-Adam method end to end: a known displacement through the 1 mm working grid.

The images are on a 0.5 mm oblique grid, so the method averages them by 2 onto its working
grid and maps its field back with ``embed``: an error in either mapping (half-voxel offset,
vector scaling, axis order) shows up as a biased recovered displacement.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.config import RegistrationConfig
from inference.deformable.instance import AdamSettings
from inference.io.nifti import Image
from inference.methods.convex_adam import ConvexAdamMethod
from tests.conftest import oblique_vox2world

SHAPE = (80, 72, 64)  # 0.5 mm voxels, non-cubic


def test_recovers_a_known_smooth_displacement_through_the_working_grid():
    rng = np.random.default_rng(0)
    moving = ndimage.gaussian_filter(rng.normal(size=SHAPE), 3.0).astype(np.float32)
    i = np.arange(SHAPE[0], dtype=np.float32)[:, None, None]
    truth = np.zeros((*SHAPE, 3), dtype=np.float32)  # full-grid voxels along array axes
    truth[..., 0] = 5.0
    truth[..., 1] = -3.0 + 2.0 * np.sin(np.pi * i / SHAPE[0])  # varies along axis 0
    truth[..., 2] = 2.0
    coords = np.indices(SHAPE, dtype=np.float32) + np.moveaxis(truth, -1, 0)
    fixed = (
        ndimage.map_coordinates(moving, coords, order=1, mode="nearest") + 10.0
    )  # fixed(x) = moving(x + u(x))
    vox2world = oblique_vox2world(spacing=(0.5, 0.5, 0.5))
    config = RegistrationConfig(crop_margin_mm=0.0, adam=AdamSettings(iterations=30, feature_pool=1))
    result = ConvexAdamMethod(config)(Image(fixed, vox2world), {"0001": Image(moving + 10.0, vox2world)})
    field = result.fields["0001"]
    assert field.shape == (*SHAPE, 3) and result.notes["working_shape"] == (40, 36, 32)
    error = np.abs(field - truth)[12:-12, 12:-12, 12:-12]  # voxels of the 0.5 mm grid
    assert error.mean() < 0.6, error.reshape(-1, 3).mean(0)
    # ... and clearly better than no registration.
    assert error.mean() < 0.2 * np.abs(truth).mean()


def test_embed_maps_working_voxels_to_full_voxels_exactly():
    import torch

    from inference.methods.convex_adam import WorkingGrid, embed

    grid = WorkingGrid(lo=(4, 2, 0), factor=2, shape=(10, 8, 6), full_shape=(30, 22, 14))
    ramp = torch.zeros(1, 3, *grid.shape)
    ramp[0, 0] = torch.arange(10, dtype=torch.float32)[:, None, None]  # u_0 = working index along i
    full = embed(ramp, grid)
    # Working voxel w is centred on full voxel lo + 2 w + 0.5, and vectors scale by 2:
    # inside the crop, full voxel x gets 2 * (x - lo - 0.5) / 2 = x - 4.5 along axis 0.
    x = np.arange(5, 23)
    np.testing.assert_allclose(full[x, 5, 5, 0], x - 4.5, atol=1e-5)
    assert np.abs(full[..., 1:]).max() == 0.0  # no leak into the other components
    np.testing.assert_allclose(full[:4, 5, 5, 0], 0.0, atol=1e-6)  # border extension before the crop
    np.testing.assert_allclose(full[25:, 5, 5, 0], 18.0, atol=1e-6)  # ... and after it (last cell 9 * 2)
